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


def compile_layouts_i386(workdir: Path, includes: str, layouts: list[Layout],
                         cflags: tuple[str, ...] = ()) -> dict[str, int]:
    """The same figures as a 32-bit guest's compiler sees them (what Xen's compat layer
    translates). Built freestanding with -m32 and read out of the object file, so no 32-bit
    C library is needed."""
    from elftools.elf.elffile import ELFFile

    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed"
    keys, exprs = [], []
    for ctype, cls, renames in layouts:
        keys.append(f"{ctype} sizeof")
        exprs.append(f"sizeof({ctype})")
        for field, *_ in cls._fields_:
            keys.append(f"{ctype} {field}")
            exprs.append(f"offsetof({ctype}, {renames.get(field, field)})")
    source = workdir / "layouts32.c"
    source.write_text("#include <stddef.h>\n#include <stdint.h>\n" + includes +
                      "\nconst uint32_t layout_values[] = {" + ", ".join(exprs) + "};\n")
    obj = workdir / "layouts32.o"
    build = subprocess.run([cc, "-m32", "-ffreestanding", *cflags, "-c", "-o", str(obj),
                            str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"32-bit layout program did not compile:\n{build.stderr}"
    with obj.open("rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name("layout_values")[0]
        data = elf.get_section(sym["st_shndx"]).data()
        raw = data[sym["st_value"] : sym["st_value"] + 4 * len(keys)]
    values = [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]
    return dict(zip(keys, values, strict=True))
