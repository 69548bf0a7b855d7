from loralab.cli.main import main

raise SystemExit(main())
