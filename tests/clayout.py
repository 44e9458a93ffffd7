"""Compare ctypes struct layouts with what a C compiler sees in real headers."""

from __future__ import annotations

import ctypes as C
import shutil
import subprocess
from pathlib import Path

Layout = tuple[str, type[C.Structure], dict[str, str]]  # C type, ctypes class, renames


def compile_layouts(workdir: Path, includes: str, layouts: list[Layout],
                    cflags: tuple[str, ...] = ()) -> dict[str, int]:
    """sizeof and every field's offsetof, as printed by a program gcc builds from `includes`."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed"
    lines = ["#include <stddef.h>", "#include <stdio.h>", includes, "int main(void) {"]
    for ctype, cls, renames in layouts:
        lines.append(f'  printf("{ctype} sizeof %zu\\n", sizeof({ctype}));')
        for field, *_ in cls._fields_:
            member = renames.get(field, field)
            lines.append(f'  printf("{ctype} {field} %zu\\n", offsetof({ctype}, {member}));')
    lines.append("  return 0; }")
    (workdir / "layouts.c").write_text("\n".join(lines))
    build = subprocess.run([cc, *cflags, "-o", str(workdir / "layouts"),
                            str(workdir / "layouts.c")], capture_output=True, text=True)
    assert build.returncode == 0, f"layout program did not compile:\n{build.stderr}"
    out = subprocess.run([str(workdir / "layouts")], check=True, capture_output=True,
                         text=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in out.splitlines())}


def check_layout(c_layouts: dict[str, int], ctype: str, cls: type[C.Structure],
                 renames: dict[str, str]) -> None:
    assert C.sizeof(cls) == c_layouts[f"{ctype} sizeof"], f"sizeof({ctype})"
    for field, *_ in cls._fields_:
        assert getattr(cls, field).offset == c_layouts[f"{ctype} {field}"], f"{ctype}.{field}"
