#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (python3 standard library only; run from anywhere):
corpus/options/ (INI files: the committed configs, the e2e tests' bad ones; command lines: the
hostile-input table's argument lists, as 0x01 + NUL-separated tokens) and corpus/npy/ (tiny valid
float32 / float16 .npy files, 0-d to 3-d, format versions 1.0 and 2.0)."""
import pathlib
import shlex
import shutil
import struct

here = pathlib.Path(__file__).resolve().parent
root = here.parents[1]
opt = here / "corpus" / "options"
npy = here / "corpus" / "npy"
for d in (opt, npy):
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)

# INI files.
for ini in sorted((root / "configs").glob("*.ini")):
    shutil.copy(ini, opt / ini.name)
bad = {
    "bad-misspelt.ini": "[pattern]\ncausl = true\n",
    "bad-section.ini": "[shape]\ncausal = true\n",
    "bad-value.ini": "[pattern]\ncausal = maybe\n",
    "bad-nested.ini": "[pattern]\nconfig = other.ini\n",
    "bad-unknown.ini": "[io]\nloud = true\n",
    "bom.ini": "\ufeff[pattern]\ncausal = true\n",
    "top-level.ini": "causal = true\nminlen = 2K\nwindow = 100,0\ndocs = 3\n",
    "sizes.ini": "[sweep]\nminlen = 1K\nmaxlen = 4K\nfactor = 2\n[pattern]\ndoc-dist = lognormal:512,1.0\nglobal = 4\n",
}
for name, text in bad.items():
    (opt / name).write_text(text, encoding="utf-8")

# Command lines from the hostile-input table (lines naming its generated files are skipped).
n = 0
for line in (root / "tests" / "e2e" / "hostile.txt").read_text(encoding="utf-8").splitlines():
    if line.startswith("#") or line.count("|") < 2 or "@" in line:
        continue
    try:
        args = shlex.split(line.split("|", 2)[2])
    except ValueError:
        continue
    (opt / f"argv-{n:03d}").write_bytes(b"\x01" + b"\0".join(a.encode() for a in args))
    n += 1
for i, args in enumerate([
    ["--mode", "fwd+bwd", "-b", "1K", "-e", "2K", "--heads", "2", "--kv-heads", "1", "--causal", "true"],
    ["-b", "1500", "-d", "bf16", "--window", "100,0", "--doc-lens", "300,700", "--global", "4"],
    ["--strategy", "hybrid", "--ulysses-degree", "2", "--layout", "striped", "--doc-dist", "exp:400"],
    ["--stride", "3", "--random", "1", "--random-seed", "5", "--block", "32", "--global-list", "7,500", "--alibi"],
    ["--help"],
]):
    (opt / f"argv-ok-{i}").write_bytes(b"\x01" + b"\0".join(a.encode() for a in args))


# .npy files: magic, version, header length (u16 for 1.0, u32 for 2.0), the dict padded with spaces
# and a newline to a multiple of 64 bytes, then the data.
def write_npy(name, descr, shape, version=1):
    dims = "".join(f"{s}, " for s in shape).rstrip(" ") if len(shape) == 1 else ", ".join(map(str, shape))
    d = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    pre = 10 if version == 1 else 12
    total = (pre + len(d) + 1 + 63) // 64 * 64
    d = d + " " * (total - pre - len(d) - 1) + "\n"
    head = b"\x93NUMPY" + bytes([version, 0])
    head += struct.pack("<H" if version == 1 else "<I", len(d))
    count = 1
    for s in shape:
        count *= s
    if descr == "<f4":
        data = struct.pack(f"<{count}f", *[0.25 * i - 1 for i in range(count)])
    else:
        data = struct.pack(f"<{count}e", *[0.5 * i - 2 for i in range(count)])
    (npy / name).write_bytes(head + d.encode("latin1") + data)


write_npy("f32-1d.npy", "<f4", (5,))
write_npy("f16-1d.npy", "<f2", (7,))
write_npy("f32-2d.npy", "<f4", (3, 4))
write_npy("f16-2d.npy", "<f2", (2, 6))
write_npy("f32-3d.npy", "<f4", (4, 2, 3))
write_npy("f16-3d.npy", "<f2", (3, 2, 4))
write_npy("f32-0d.npy", "<f4", ())
write_npy("f32-empty.npy", "<f4", (0, 2, 3))
write_npy("f32-3d-v2.npy", "<f4", (2, 2, 2), version=2)
print(f"{len(list(opt.iterdir()))} options seeds, {len(list(npy.iterdir()))} npy seeds")
