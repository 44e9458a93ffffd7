"""Coverage-guided fuzzing of every parser a user or a guest can feed pyxen (issue 15).

Each module of `fuzz.targets` is one target: a `one_input(data: bytes) -> None` that feeds
the bytes to one parser and raises only on a bug (an exception other than the parser's
documented one-line error, a broken invariant, a hang), a `seeds()` that returns valid
inputs to start from, and INSTRUMENT, the modules it wants coverage of. `python -m fuzz` runs a target under atheris (libFuzzer for
Python), with pyxen's modules instrumented for coverage:

    python -m fuzz --list                                  # the targets
    python -m fuzz xlcfg --runs 20000                      # a quick check
    python -m fuzz xlcfg --seconds 3600 --corpus /tmp/c    # a long campaign

A long campaign keeps what it learns in the --corpus directory (run it again to go on
from there); a crash is written as crash-<sha1> to the current directory (--artifacts
DIR elsewhere) and reproduced with `python -m fuzz xlcfg crash-<sha1>`. Each crash fixed
gets its input in fuzz/crashes/<target>/, which tests/fuzz/test_regressions.py replays.
The committed seed corpora (fuzz/corpus/<target>/) are small; `seeds()` adds generated
ones (an ELF, a bzImage per compressor, XenStore messages) at the start of every run.
"""
