"""Trees the project writes itself that behave like the real Shadow-box trees at build time.

Why imitations: the real trees (kkamagui/shadow-box-for-x86, gooroom/gooroom-os-protector master
and branch gooroom-3.0) may not be copied into this repository. These small Makefiles, scripts
and C stubs reproduce only the behaviours the rig must cope with, as read from those trees:

- upstream: the root ``Makefile`` ignores ``KDIR`` (``KVERSION = $(shell uname -r)``, then
  ``make -C /lib/modules/$(KVERSION)/build``), runs ``python make_symtable.py`` first (Python 2
  syntax), needs ``nasm`` for ``.asm`` files and reads ``system.map/<uname -v>.map``;
- gooroom: the buildable tree is ``Source/``; ``Source/Makefile`` uses ``.ONESHELL:`` without
  ``-e`` (so make exits 0 whatever fails) and copies ``/boot/System.map-$(uname -r)`` itself;
  master's ``Source/shadow_box/Makefile`` runs make_symtable.py, gooroom-3.0's does not (v3.1.0).

The C stubs are written here from scratch: they use ``kallsyms_lookup_name`` (not exported since
5.7) and ``module_mutex`` (not exported), so they fail to compile or link on 5.x/6.x as the real
trees do. Nothing of Shadow-box's code is in them.
"""

from __future__ import annotations

from pathlib import Path

#: Python 2 only (a print statement): Python 3 stops with a SyntaxError, as on the real script.
SYMTABLE_PY2 = """\
import os, sys
name = os.popen("uname -v").read().strip()
path = "system.map/" + name + ".map"
if not os.path.exists(path):
    print "System.map not found:", path
    sys.exit(1)
print "symbol table from", path
open("symbol.h", "w").write("/* symbols */\\n")
"""

STUB_C = """\
#include <linux/module.h>
#include <linux/kallsyms.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include "shadow_box.h"

extern struct mutex module_mutex;

static int __init stub_init(void)
{
\tunsigned long pages = totalram_pages;   /* a variable before 5.0, a function since */
\tvoid *p = (void *)kallsyms_lookup_name("sys_call_table");   /* not exported since 5.7 */
\tmutex_lock(&module_mutex);
\tmutex_unlock(&module_mutex);
\tpr_info("stub: %lu %p\\n", pages, p);
\treturn 0;
}
module_init(stub_init);
MODULE_LICENSE("GPL");
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def upstream_tree(dest: Path) -> Path:
    """An upstream-shaped tree (root Makefile, make_symtable.py, shadow_box.h v2.x)."""
    _write(
        dest / "Makefile",
        "obj-m = shadow_box.o\n"
        "KVERSION = $(shell uname -r)\n\n"
        "%.o: %.asm\n\tnasm -f elf64 -o $@ $^\n\n"
        "all:\n\tpython make_symtable.py\n\tmake -C /lib/modules/$(KVERSION)/build M=$(PWD) modules\n",
    )
    _write(dest / "make_symtable.py", SYMTABLE_PY2)
    _write(dest / "shadow_box.h", '#define SHADOWBOX_VERSION "2.3.0"\n')
    _write(dest / "shadow_box.c", STUB_C)
    (dest / "system.map").mkdir(exist_ok=True)
    return dest


def gooroom_tree(dest: Path, branch: str = "master") -> Path:
    """A gooroom-shaped tree: ``Source/`` with a ``.ONESHELL`` top Makefile and two module folders.

    ``branch`` is ``master`` (v2.3.0, runs make_symtable.py) or ``gooroom-3.0`` (v3.1.0, does not).
    """
    src = dest / "Source"
    _write(
        src / "Makefile",
        "all: shadow_box_module shadow_box_helper_module\n"
        ".ONESHELL:\n"
        "shadow_box_module:\n"
        "\t@echo Build Shadow-Box Module...\n"
        "\tcd shadow_box\n"
        '\tcp /boot/System.map-`uname -r` "system.map/`uname -v`.map"\n'
        "\tmake -j\n"
        "\tcd ..\n\n"
        "shadow_box_helper_module:\n"
        "\t@echo Build Shadow-Box Helper Module...\n"
        "\tcd shadow_box_helper\n"
        "\tmake -j\n"
        "\tcd ..\n",
    )
    symtable = "\tpython make_symtable.py\n" if branch == "master" else ""
    kbuild = (
        "KVERSION = $(shell uname -r)\n\nall:\n"
        + symtable
        + ("\tmake -C /lib/modules/$(KVERSION)/build M=$(PWD) modules\n")
    )
    _write(src / "shadow_box" / "Makefile", "obj-m = shadow_box.o\n" + kbuild)
    version = "2.3.0" if branch == "master" else "3.1.0"
    _write(src / "shadow_box" / "shadow_box.h", f'#define SHADOWBOX_VERSION "{version}"\n')
    _write(src / "shadow_box" / "shadow_box.c", STUB_C)
    if branch == "master":
        _write(src / "shadow_box" / "make_symtable.py", SYMTABLE_PY2)
        (src / "shadow_box" / "system.map").mkdir(exist_ok=True)
    _write(src / "shadow_box_helper" / "Makefile", "obj-m = shadow_box_helper.o\n" + kbuild.replace(symtable, ""))
    _write(src / "shadow_box_helper" / "shadow_box.h", f'#define SHADOWBOX_VERSION "{version}"\n')
    _write(src / "shadow_box_helper" / "shadow_box_helper.c", STUB_C)
    return dest


#: recipe name -> a function writing a tree of that flavour.
TREES = {
    "upstream": upstream_tree,
    "gooroom": lambda dest: gooroom_tree(dest, "master"),
    "gooroom-3.0": lambda dest: gooroom_tree(dest, "gooroom-3.0"),
}
