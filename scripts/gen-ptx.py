#!/usr/bin/env python3
"""Compile every kernels/*.cu to PTX with NVRTC (through ctypes) and write the manifest.

    gen-ptx.py [--nvrtc PATH/libnvrtc.so.12] [--check]

Writes kernels/ptx/<name>.ptx for each kernels/<name>.cu and kernels/ptx/MANIFEST.json with
the NVRTC version, the target, the options and, per file, the SHA-256 of the source (the .cu
plus every kernels/*.cuh header handed to NVRTC) and of the PTX. The output depends only on the
sources, the options and the NVRTC build, so it is reproducible bit for bit: the program is
named by its base name (no absolute paths reach the PTX) and no line info is emitted.

--check compiles into a temporary directory and compares with the committed files; it exits 1
naming every stale, missing or extra file.

No GPU is needed: NVRTC is a pure compiler. The library comes from the PyPI wheel
nvidia-cuda-nvrtc-cu12==12.0.140 (scripts/gen-ptx.sh installs it and passes --nvrtc).
"""

import argparse
import ctypes
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")
PTX_DIR = os.path.join(KERNELS, "ptx")
TARGET = "compute_80"
OPTIONS = [f"--gpu-architecture={TARGET}", "-default-device", "--std=c++17"]
# The wheel this pipeline is pinned to; a different NVRTC emits different PTX.
EXPECTED_NVRTC = (12, 0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_nvrtc(explicit):
    if explicit:
        return explicit
    pattern = os.path.join(ROOT, ".venv-cuda", "**", "libnvrtc.so.12")
    hits = sorted(glob.glob(pattern, recursive=True))
    if not hits:
        sys.exit("gen-ptx: libnvrtc.so.12 not found under .venv-cuda/; run scripts/gen-ptx.sh "
                 "(it installs nvidia-cuda-nvrtc-cu12==12.0.140) or pass --nvrtc PATH")
    return hits[0]


class Nvrtc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        lib = self.lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        lib.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcCompileProgram.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcGetProgramLogSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetProgramLog.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcGetPTXSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.nvrtcGetPTX.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]

    def check(self, code, what):
        if code != 0:
            msg = self.lib.nvrtcGetErrorString(code).decode()
            raise RuntimeError(f"{what} failed: {msg} ({code})")

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def compile(self, name, source: bytes, headers):
        """Returns (ptx bytes, log text). Raises on a compile error."""
        prog = ctypes.c_void_p()
        n = len(headers)
        hdr_src = (ctypes.c_char_p * n)(*[h[1] for h in headers])
        hdr_name = (ctypes.c_char_p * n)(*[h[0].encode() for h in headers])
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), n,
                                               hdr_src, hdr_name), "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
            rc = self.lib.nvrtcCompileProgram(prog, len(OPTIONS), opts)
            size = ctypes.c_size_t()
            self.check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
            buf = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetProgramLog(prog, buf), "log")
            log = buf.value.decode(errors="replace").strip()
            if rc != 0:
                raise RuntimeError(f"{name}: compilation failed:\n{log}")
            self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "PTX size")
            buf = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetPTX(prog, buf), "PTX")
            # The buffer is NUL-terminated; the file is the text without it.
            return buf.raw[: size.value].rstrip(b"\0"), log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def generate(nvrtc, out_dir):
    """Compile all sources into out_dir; returns the manifest dict. Exits on any warning."""
    version = nvrtc.version()
    if version != EXPECTED_NVRTC:
        sys.exit(f"gen-ptx: NVRTC {version[0]}.{version[1]} found, the committed PTX is made "
                 f"with {EXPECTED_NVRTC[0]}.{EXPECTED_NVRTC[1]} (nvidia-cuda-nvrtc-cu12==12.0.140)")
    header_paths = sorted(glob.glob(os.path.join(KERNELS, "*.cuh")))
    headers = [(os.path.basename(p), open(p, "rb").read()) for p in header_paths]
    sources = sorted(glob.glob(os.path.join(KERNELS, "*.cu")))
    if not sources:
        sys.exit("gen-ptx: no kernels/*.cu found")
    files = {}
    failed = False
    for path in sources:
        name = os.path.splitext(os.path.basename(path))[0]
        src = open(path, "rb").read()
        try:
            ptx, log = nvrtc.compile(os.path.basename(path), src, headers)
        except RuntimeError as e:
            print(f"gen-ptx: {e}", file=sys.stderr)
            failed = True
            continue
        if log:
            # Warnings are errors here: the committed PTX must compile cleanly.
            print(f"gen-ptx: {name}.cu: NVRTC warnings:\n{log}", file=sys.stderr)
            failed = True
            continue
        with open(os.path.join(out_dir, name + ".ptx"), "wb") as f:
            f.write(ptx)
        # The source hash covers the headers too, since they are part of every program.
        h = hashlib.sha256(src)
        for hname, htext in headers:
            h.update(b"\0" + hname.encode() + b"\0" + htext)
        files[name] = {"source_sha256": h.hexdigest(), "ptx_sha256": sha256(ptx)}
    if failed:
        sys.exit(1)
    manifest = {
        "nvrtc_version": f"{version[0]}.{version[1]}",
        "target": TARGET,
        "options": OPTIONS,
        "headers": [h[0] for h in headers],
        "files": files,
    }
    with open(os.path.join(out_dir, "MANIFEST.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def listing(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".ptx") or n == "MANIFEST.json") \
        if os.path.isdir(d) else []


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvrtc", help="path to libnvrtc.so.12")
    ap.add_argument("--check", action="store_true",
                    help="compare freshly generated PTX with kernels/ptx/ instead of writing it")
    args = ap.parse_args()
    nvrtc = Nvrtc(find_nvrtc(args.nvrtc))

    if not args.check:
        os.makedirs(PTX_DIR, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            manifest = generate(nvrtc, tmp)
            # Replace the whole set, so a removed .cu also loses its .ptx.
            for n in listing(PTX_DIR):
                os.remove(os.path.join(PTX_DIR, n))
            for n in listing(tmp):
                shutil.copyfile(os.path.join(tmp, n), os.path.join(PTX_DIR, n))
        print(f"gen-ptx: wrote {len(manifest['files'])} PTX files and MANIFEST.json to "
              f"kernels/ptx/ (NVRTC {manifest['nvrtc_version']}, {TARGET})")
        return

    with tempfile.TemporaryDirectory() as tmp:
        generate(nvrtc, tmp)
        fresh, committed = listing(tmp), listing(PTX_DIR)
        problems = []
        for n in sorted(set(fresh) | set(committed)):
            if n not in committed:
                problems.append(f"missing: kernels/ptx/{n}")
            elif n not in fresh:
                problems.append(f"extra (no source): kernels/ptx/{n}")
            elif open(os.path.join(tmp, n), "rb").read() != \
                    open(os.path.join(PTX_DIR, n), "rb").read():
                problems.append(f"stale: kernels/ptx/{n}")
        if problems:
            print("gen-ptx --check: the committed PTX does not match kernels/*.cu:",
                  file=sys.stderr)
            for p in problems:
                print("  " + p, file=sys.stderr)
            print("regenerate with scripts/gen-ptx.sh and commit kernels/ptx/", file=sys.stderr)
            sys.exit(1)
        print(f"gen-ptx --check: kernels/ptx/ is current ({len(fresh) - 1} PTX files)")


if __name__ == "__main__":
    main()
