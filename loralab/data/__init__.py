"""Data: read examples from files and builtin data sets, map labels to ids, tokenize and batch for a task.

One concern per module, each usable on its own (none imports torch except `batching` and `packing`):

    tasks.py     the task list (classification, pair-classification, regression, causal-lm) and what each decides
    examples.py  `Example`: one raw example (text, pair, label, target or conversation, where it came from)
    readers.py   `read_examples(path, ReadOptions(...))`: TSV, CSV, JSONL, E2E, chat, `datasets` folders, .gz/.bz2/.xz
    splits.py    `stratified_split` (corpora without splits), `fixed_subset` (the --*-limit subsets)
    builtin.py   `load_builtin("sst2")`: the named data sets, `shared_data_dir`
    labels.py    `LabelMap`: label name <-> class id, saved with the adapter; spelling warnings
    encoding.py  `Task`, `encode_examples`: token ids and labels per task (`EncodedDataset`)
    chat.py      conversations through the chat template, loss on assistant turns; `render_chat_prompt`
    batching.py  dynamic padding (`PadCollator`), the length-grouped training sampler, evaluation batches
    packing.py   `pack_examples`: short causal LM examples packed into rows, attention kept inside each

The command-line flags that describe a data file live in loralab.cli.data_args. docs/data.md documents
the formats, flags, builtin data sets and the fixed split rule.
"""
