"""The commands of `cci-local`, one module per stage or group (assembled in cci_local/cli.py).

Each command checks and parses its options, calls the stage's entry function, and
prints what it returns; the work lives in the stage modules (docs/architecture.md)."""

import os

# Progress is Rich's: libraries' own tqdm bars (transformers' GGUF loader has one that its
# disable_progress_bar() does not reach) are off unless the user turns them on.  tqdm
# reads this when it is imported, so it is set before any stage imports a library.
os.environ.setdefault("TQDM_DISABLE", "1")
