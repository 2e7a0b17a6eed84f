"""Building the C++ and CUDA kernels: just-in-time on first use (cached), or ahead of time from setup.py.

JIT: `torch.utils.cpp_extension.load` compiles csrc/*.cpp with -O3 and OpenMP into a shared library the
first time a `cpp` kernel is used (~15-60 s), caches it under $MINILLM_EXT_DIR (default
~/.cache/minillm/ext/<torch version>-<hash of the csrc path>), and reuses it while the sources are unchanged.
The library registers its ops with torch (`torch.ops.minillm.*`), so loading it is all that is needed. We never pass
-march=native: speed on any x86 CPU comes from the kernels' own AVX-512/AVX2 clones (csrc/simd.h).

CUDA: csrc/*.cu are plain CUDA (no torch headers) behind a launcher API; csrc/cuda_binding.cpp wraps them
for torch. That binding is built only when torch itself has CUDA and a GPU is visible.

AOT: `MINILLM_BUILD_EXT=1 pip install --no-build-isolation -e .` calls `aot_extensions()` below, which
builds the same sources into `minillm._C_cpu` (and `minillm._C_cuda`). `load_cpp()` prefers an AOT
library when it exists. Failures are returned as a reason string, never raised here: the caller decides
whether to fall back (backend "auto") or to raise (an explicit backend).
"""
import glob
import os
import shutil
import threading

import torch

CSRC = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "csrc"))
CPU_SOURCES = ["ops.cpp", "softmax.cpp", "attention.cpp", "adamw.cpp"]
CUDA_SOURCES = ["cuda_binding.cpp", "softmax.cu", "attention.cu", "adamw.cu"]
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-gencode=arch=compute_80,code=sm_80",
              "-gencode=arch=compute_90,code=sm_90", "-gencode=arch=compute_90,code=compute_90"]  # + PTX for newer GPUs

_lock = threading.Lock()
_state = {}  # name -> (ok: bool, reason: str)


def build_dir():
    """One cache folder per torch version and per checkout (two checkouts sharing one folder would keep
    overwriting each other's build.ninja and rebuild every time)."""
    import hashlib
    tag = hashlib.sha1(CSRC.encode()).hexdigest()[:8]
    d = os.environ.get("MINILLM_EXT_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "minillm", "ext", torch.__version__.replace("+", "_") + "-" + tag)
    os.makedirs(d, exist_ok=True)
    return d


def _try_aot(module):
    try:
        __import__(module)  # an AOT build registers the same ops on import
        return True
    except ImportError:
        return False


def load_cpp(verbose=False):
    """Build (or reuse) and load the C++ CPU kernels. Returns (ok, reason)."""
    with _lock:
        if "cpp" in _state:
            return _state["cpp"]
        _state["cpp"] = _load("cpp", verbose)
        return _state["cpp"]


def _load(name, verbose):
    if _try_aot("minillm._C_cpu" if name == "cpp" else "minillm._C_cuda"):
        return True, "ahead-of-time build"
    srcs = [os.path.join(CSRC, s) for s in (CPU_SOURCES if name == "cpp" else CUDA_SOURCES)]
    missing = [s for s in srcs if not os.path.exists(s)]
    if missing:
        return False, f"kernel sources not found ({os.path.basename(missing[0])}); reinstall minillm from a checkout"
    if name == "cpp" and not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return False, "no C++ compiler found (install g++ or clang, or set CXX)"
    if name == "cuda":
        if not torch.cuda.is_available():
            return False, ("this torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU visible")
        from torch.utils.cpp_extension import CUDA_HOME
        if CUDA_HOME is None:
            return False, "nvcc / CUDA toolkit not found (set CUDA_HOME)"
    try:
        import ninja  # noqa: F401  (cpp_extension.load needs it)
    except ImportError:
        return False, "the 'ninja' package is missing (pip install ninja)"
    from torch.utils.cpp_extension import load
    _clear_stale_lock(build_dir() if name == "cpp" else os.path.join(build_dir(), "cuda"))
    try:
        kwargs = dict(name=f"minillm_{name}_ext", sources=srcs, extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                      build_directory=build_dir(), is_python_module=False, verbose=verbose)
        if name == "cuda":
            kwargs.update(extra_cuda_cflags=NVCC_FLAGS, build_directory=os.path.join(build_dir(), "cuda"))
            os.makedirs(kwargs["build_directory"], exist_ok=True)
        load(**kwargs)
    except Exception as e:  # a compiler error: keep the first line that says what failed
        lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or [type(e).__name__]
        return False, f"build failed: {lines[0].strip()[:200]} (build dir {build_dir()})"
    return True, f"JIT build in {build_dir()}"


def _clear_stale_lock(d, max_age_s=900):
    """torch's build lock file outlives a build that was killed, and then every later build waits forever."""
    import time
    lock = os.path.join(d, "lock")
    try:
        if time.time() - os.path.getmtime(lock) > max_age_s:
            os.remove(lock)
    except OSError:
        pass


def load_cuda(verbose=False):
    """Build (or reuse) and load the CUDA kernels (needs the CPU ops first: they define the op schemas)."""
    with _lock:
        if "cuda" in _state:
            return _state["cuda"]
    ok, why = load_cpp(verbose)
    with _lock:
        if not ok:
            _state["cuda"] = (False, f"the CPU extension (which defines the ops) failed: {why}")
        else:
            _state["cuda"] = _load("cuda", verbose)
        return _state["cuda"]


def aot_extensions():
    """(ext_modules, cmdclass) for setup.py: the CPU kernels always, the CUDA ones when torch has CUDA."""
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME
    rel = os.path.relpath(CSRC, os.getcwd())
    aot = ["-DMINILLM_AOT_MODULE"]
    exts = [CppExtension("minillm._C_cpu", [os.path.join(rel, s) for s in CPU_SOURCES],
                         extra_compile_args=CFLAGS + aot, extra_link_args=["-fopenmp"])]
    if torch.version.cuda is not None and CUDA_HOME is not None:
        exts.append(CUDAExtension("minillm._C_cuda", [os.path.join(rel, s) for s in CUDA_SOURCES],
                                  extra_compile_args={"cxx": CFLAGS + aot, "nvcc": NVCC_FLAGS}))
    return exts, {"build_ext": BuildExtension}


def sources():
    """Every kernel source file, for `minillm kernels info`."""
    return sorted(glob.glob(os.path.join(CSRC, "*.c*")) + glob.glob(os.path.join(CSRC, "*.h")))
