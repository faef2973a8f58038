"""`alexnet-deploy serve`: a real Triton Inference Server on an export's model repository.

The server is the user's own `tritonserver` (--tritonserver, or on PATH, e.g. in a Triton image)
or the one inside the nvidia-pytriton wheel. Models whose backend the server lacks (the production
onnxruntime / pytorch / tensorrt configs on a CPU machine with only the Python backend) are left
unloaded and listed with the reason; everything else is loaded through the model-control API, so
models can be unloaded and reloaded while it runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_deploy.errors import UserError

INSTALL_HINT = ("pip install --no-deps nvidia-pytriton (it ships tritonserver with the Python backend; "
                "--no-deps because it pins numpy<2), or pass --tritonserver PATH")
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorrt_plan": "tensorrt", "openvino": "openvino"}
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def find_tritonserver(explicit: str | os.PathLike | None = None) -> Path:
    """The server binary: `explicit`, else `tritonserver` on PATH, else the nvidia-pytriton wheel's."""
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserError(f"--tritonserver {path}: not an executable file")
        return path
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        wheel = Path(spec.origin).parent / "tritonserver" / "bin" / "tritonserver"
        if wheel.is_file():
            return wheel
    raise UserError(f"no tritonserver found: {INSTALL_HINT}")


def backend_directory(binary: Path, scratch: Path) -> Path:
    """The server's backends. A Triton image keeps them ready beside bin/; the pytriton wheel ships
    one Python-backend stub per Python version, so the one for this interpreter is put in place
    in a scratch folder (the installed wheel is never modified)."""
    root = binary.resolve().parent.parent
    backends = root / "backends"
    stubs = root / "python_backend_stubs"
    if not stubs.is_dir():
        if not backends.is_dir():
            raise UserError(f"{binary}: no backends/ folder beside its bin/ (not a Triton install?)")
        return backends
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"{binary}: its Python backend has no stub for Python {version} "
                        f"(it has {', '.join(sorted(p.name for p in stubs.iterdir()))})")
    out = scratch / "backends"
    for name in os.listdir(backends):
        (out / name).mkdir(parents=True)
        for f in (backends / name).iterdir():
            (out / name / f.name).symlink_to(f)  # a link: the stub's RPATH is resolved from its real place
    (out / "python" / stub.name).symlink_to(stub)
    return out


STUB_NUMPY = "numpy<2"  # the wheel's stub reads tensors through numpy 1.x's C ABI (see python_backend_env)
ENV_DIR = "triton-python-backend"


def python_backend_env() -> Path:
    """The environment the Python backend's models run in: this one, seen through a small virtualenv
    that adds only numpy 1.x. The pytriton stub is built against numpy 1.x; under numpy 2 it reads
    input tensors wrongly and crashes on strings (tried). The layer's .pth adds this environment's
    site-packages after its own (site.addsitedir, so editable installs resolve too), so the models
    import onnxruntime, openvino, torch and alexnet_deploy from here. Made once, beside this
    environment (one pip install of numpy)."""
    site_dir = sysconfig.get_paths()["purelib"]
    env = Path(sys.prefix) / ENV_DIR
    python = env / "bin" / "python3"
    marker = env / "alexnet-deploy-layer.pth"
    # The stub imports model.py from the repository and ignores PYTHON* variables: without
    # dont_write_bytecode a __pycache__ beside it changes the model folder's hash, and the
    # manifest's integrity check then refuses the export.
    line = f"import site, sys; site.addsitedir({site_dir!r}); sys.dont_write_bytecode = True\n"
    if python.exists() and marker.exists() and marker.read_text() == line:
        return env
    base = getattr(sys, "_base_executable", sys.executable)
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(env)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", STUB_NUMPY], check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as e:
        detail = e.stderr.decode(errors="replace").strip().splitlines()[-1:] if getattr(e, "stderr", None) else [str(e)]
        raise UserError(f"could not make the Python backend's environment {env} ({' '.join(detail)}); "
                        f"it needs write access there and pip able to install {STUB_NUMPY!r}") from None
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, marker.name).write_text(line)
    marker.write_text(line)  # written last: a half-made layer is remade next time
    return env


def server_environment(python_env: Path) -> dict[str, str]:
    """This process's environment with `python_env` activated: the stub embeds an interpreter that
    finds its prefix from the first python3 on PATH, as an activated virtualenv does, so no model
    code edits sys.path."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(python_env / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(python_env)
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY")
    if libdir and ldlib and (Path(libdir) / ldlib).exists():  # this Python's own libpython first
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    return env


def repository_of(folder: str | os.PathLike) -> Path:
    """An export folder's triton/ repository, or a repository folder itself."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give an export folder made with --formats triton)")
    for repo in (folder / "triton", folder):
        if repo.is_dir() and any((d / "config.pbtxt").is_file() for d in repo.iterdir() if d.is_dir()):
            return repo
    raise UserError(f"{folder} holds no Triton model repository: export it with --formats triton")


def read_configs(repo: Path) -> dict[str, object]:
    from alexnet_deploy.backends.triton.export import parse_config

    configs = {}
    for d in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        try:
            configs[d.name] = parse_config((d / "config.pbtxt").read_text(encoding="utf-8"))
        except Exception as e:  # a hand-edited config: name the file and Triton's schema complaint
            raise UserError(f"{d / 'config.pbtxt'}: not a valid Triton model config "
                            f"({str(e).splitlines()[0]})") from None
    return configs


def plan_models(repo: Path, backends: Path) -> tuple[list[str], dict[str, str]]:
    """(models to load, {model: why it is not loaded}) for this server's backends."""
    configs = read_configs(repo)
    skipped: dict[str, str] = {}
    for name, cfg in configs.items():
        backend = cfg.backend or PLATFORM_BACKENDS.get(cfg.platform, cfg.platform)
        if cfg.platform != "ensemble" and not (backends / backend).is_dir():
            skipped[name] = f"this tritonserver has no {backend} backend"
    for name, cfg in configs.items():  # an ensemble serves only when every step does
        if cfg.platform == "ensemble":
            missing = [s.model_name for s in cfg.ensemble_scheduling.step
                       if s.model_name in skipped or s.model_name not in configs]
            if missing:
                skipped[name] = f"its step {missing[0]} is not served"
    return [n for n in configs if n not in skipped], skipped


def check_port(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the server binds: a port left in TIME_WAIT by a stopped server is free, a listener is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise UserError(f"{option} {port}: {host}:{port} is already in use; pass another port") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class TritonServer:
    """One tritonserver process on `repo`; a context manager that always stops it."""

    repo: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    binary: Path | None = None
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> TritonServer:
        for port, option in ((self.http_port, "--http-port"), (self.grpc_port, "--grpc-port"),
                             (self.metrics_port, "--metrics-port")):
            check_port(self.host, port, option)
        binary = self.binary = find_tritonserver(self.binary)  # resolved once; run_serve prints it
        self._scratch = Path(tempfile.mkdtemp(prefix="alexnet-deploy-serve-"))
        backends = backend_directory(binary, self._scratch)
        self.loaded, self.skipped = plan_models(self.repo, backends)
        if not self.loaded:
            raise UserError(f"{self.repo}: this tritonserver can serve none of its models "
                            f"({'; '.join(f'{k}: {v}' for k, v in self.skipped.items())})")
        self.log_path = self.log_path or self._scratch / "tritonserver.log"
        args = [str(binary), f"--model-repository={self.repo.resolve()}", f"--backend-directory={backends}",
                "--model-control-mode=explicit", *[f"--load-model={m}" for m in self.loaded],
                f"--http-address={self.host}", f"--http-port={self.http_port}",
                f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
                "--log-verbose=0", f"--exit-timeout-secs={int(STOP_TIMEOUT_S)}"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=server_environment(python_backend_env()), start_new_session=True)
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UserError(f"tritonserver exited ({self.process.returncode}) before it was ready: "
                                f"{self.log_problem()} (log: {self.log_path})")
            if self.ready():
                return
            time.sleep(0.25)
        raise UserError(f"tritonserver was not ready within {timeout_s:.0f} s: {self.log_problem()} "
                        f"(log: {self.log_path})")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_problem(self) -> str:
        """The last error line of the server's log (its reason, in its words)."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        errors = [ln for ln in lines if ln.startswith("E") or "error:" in ln]
        return (errors or lines or ["no output"])[-1].strip()[:500]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # Triton drains in-flight requests, then exits
            try:
                self.process.wait(STOP_TIMEOUT_S + 5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def cleanup(self) -> None:
        """Remove the scratch folder (assembled backends, the log unless one was given)."""
        scratch = getattr(self, "_scratch", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()


def run_serve(folder: str | os.PathLike, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
              host: str = "127.0.0.1", tritonserver: str | os.PathLike | None = None) -> None:
    """The CLI's serve: start, list endpoints and models, serve until Ctrl-C or SIGTERM, stop."""
    server = TritonServer(repository_of(folder), http_port, grpc_port, metrics_port, host,
                          Path(tritonserver) if tritonserver else None)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with server:
            print(f"Triton {server.binary} serving {server.repo}")
            print(f"  HTTP  http://{server.http_url}   gRPC  {server.grpc_url}   "
                  f"metrics  http://{host}:{metrics_port}/metrics")
            for name in server.loaded:
                print(f"  ready    {name}")
            for name, why in server.skipped.items():
                print(f"  not served  {name}: {why}")
            print(f"  log: {server.log_path}; Ctrl-C stops")
            while server.process.poll() is None:
                time.sleep(0.5)
            raise UserError(f"tritonserver stopped on its own: {server.log_problem()}")
    except KeyboardInterrupt:
        print("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
