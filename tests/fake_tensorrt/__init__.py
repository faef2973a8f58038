"""A small stand-in for the `tensorrt` LIBRARY (not for our code), for logic tests on machines
without TensorRT or a GPU.

It models the parts of NVIDIA's Python API that the exporter and the runner call, per major version
(10.x keeps the weak-typing BuilderFlag.FP16 / INT8; 11.x removed them), and records every call in
`module.calls` so a test can assert how the builder was configured. Its parser turns each ONNX node
into a layer whose output ITensors carry the ONNX tensor names, types and shapes (as TensorRT's
parser does), so outputs can be marked. Its engines are JSON records of the network's I/O, the
profile and the source ONNX; its Runtime deserializes them into an engine that answers the runner's
questions about its tensors and whose execution context reads and writes the buffers at the
addresses it is given (host memory here: torch CPU tensors), computing with ONNX Runtime on the
source ONNX in fp32 whatever the builder flags (it checks logic, not TensorRT's numerics).
Tests inject it with `monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.9.0"))`.

Where the real library would drop or refuse tensors, a test says so: `fused` (ONNX op types whose
outputs the parsed network lacks, as if the parser folded them into a neighbour) and `unmarkable`
(op types whose outputs mark_output leaves unmarked, as TensorRT does, logging an error, for a
tensor it cannot output).
"""

from __future__ import annotations

import ctypes
import enum
import json
import types

import numpy as np
import onnx


def make_tensorrt(version: str, fused=(), unmarkable=()) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (api name, arguments) in call order
    trt.engines = []  # every engine deserialized, in order (each keeps its contexts, each its streams)

    def record(name, *args):
        trt.calls.append((name, args))

    flag_names = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if major < 11:  # removed in 11.x together with weak typing
        flag_names = ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", *flag_names]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flag_names, start=0)
    net_flags = ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
    trt.DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "INT64"], start=0)
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
    np_types = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
                trt.DataType.INT32: np.int32, trt.DataType.BOOL: np.bool_, trt.DataType.INT64: np.int64}
    trt.nptype = lambda dt: np_types[dt]
    P = onnx.TensorProto
    onnx_types = {P.FLOAT: trt.DataType.FLOAT, P.FLOAT16: trt.DataType.HALF, P.INT8: trt.DataType.INT8,
                  P.INT32: trt.DataType.INT32, P.BOOL: trt.DataType.BOOL, P.INT64: trt.DataType.INT64}

    class Logger:
        WARNING = 2

        def __init__(self, severity=WARNING):
            self.severity = severity

    class Tensor:
        def __init__(self, value_info, producer=None):
            t = value_info.type.tensor_type
            self.name = value_info.name
            self.dtype = onnx_types[t.elem_type]
            self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            self.producer = producer  # the ONNX op type that computes it (None: a network input)
            self.is_network_output = False
            self.is_shape_tensor = False  # this stand-in computes every tensor on the device

    class Layer:
        def __init__(self, name, outputs):
            self.name, self._outputs = name, outputs

        num_outputs = property(lambda self: len(self._outputs))

        def get_output(self, i):
            return self._outputs[i]

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs, self.layers, self.source = [], [], [], None

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def get_layer(self, i):
            return self.layers[i]

        def mark_output(self, tensor):
            record("mark_output", tensor.name)
            if tensor.producer in unmarkable:
                return  # TensorRT logs an error and leaves the tensor as it was
            tensor.is_network_output = True
            self.outputs.append(tensor)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            record("parse_from_file", path)
            model = onnx.load(path, load_external_data=False)
            typed = value_infos(model)
            net = self.network
            net.source, net.inputs = path, [Tensor(v) for v in model.graph.input]
            tensors = {t.name: t for t in net.inputs}
            for i, node in enumerate(model.graph.node):
                if node.op_type in fused:
                    continue
                outputs = [Tensor(typed[o], node.op_type) for o in node.output if o]
                tensors.update((t.name, t) for t in outputs)
                net.layers.append(Layer(node.name or f"{node.op_type}_{i}", outputs))
            net.outputs = [tensors[o.name] for o in model.graph.output]
            for t in net.outputs:
                t.is_network_output = True
            return True

        def get_error(self, i):
            raise IndexError(i)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002  (TensorRT's own keyword names)
            record("profile.set_shape", name, tuple(min), tuple(opt), tuple(max))
            self.shapes[name] = [list(min), list(max)]

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"  # grows with every build, like a real cache

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TF32 is on by default in TensorRT
            self.cache = None
            self.profile = None

        def set_memory_pool_limit(self, pool, size):
            record("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            record("set_flag", flag)
            self.flags.add(flag)

        def clear_flag(self, flag):
            record("clear_flag", flag)
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            record("add_optimization_profile")
            self.profile = profile

        def create_timing_cache(self, data):
            record("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            record("create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network", tuple(t.name for t in network.outputs))
            io = [(t.name, "INPUT", t.dtype.name, list(t.shape)) for t in network.inputs]
            io += [(t.name, "OUTPUT", t.dtype.name, list(t.shape)) for t in network.outputs]
            desc = {"flags": sorted(f.name for f in config.flags), "network_flags": network.flags, "io": io,
                    "profile": config.profile.shapes if config.profile else {}, "source": network.source}
            return b"FAKE-ENGINE " + json.dumps(desc).encode()

    class Engine:
        def __init__(self, desc):
            self.desc = desc
            self.io = desc["io"]  # [(name, mode, dtype, shape)]
            self.profile, self.source = desc.get("profile", {}), desc.get("source")
            self.session = None  # ONNX Runtime's, made on the first execution
            self.contexts = []

        def run(self, feeds, outputs):
            if self.session is None:
                self.session = onnx_session(self.source, outputs)
            return self.session.run(outputs, feeds)

        num_io_tensors = property(lambda self: len(self.io))

        def _tensor(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[self._tensor(name)[1]]

        def get_tensor_dtype(self, name):
            return trt.DataType[self._tensor(name)[2]]

        def get_tensor_shape(self, name):
            return tuple(self._tensor(name)[3])

        def serialize(self):
            record("serialize")
            return b"FAKE-ENGINE " + json.dumps(self.desc).encode()

        def create_execution_context(self):
            record("create_execution_context")
            self.contexts.append(Context(self))
            return self.contexts[-1]

    class Context:
        """Binds buffers by address, as TensorRT does; executes on host memory with ONNX Runtime."""

        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}
            self.streams = set()  # the stream handles it was executed on

        def set_input_shape(self, name, shape):
            lo, hi = self.engine.profile.get(name, [shape, shape])
            self.shapes[name] = tuple(shape)
            return len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi, strict=True))

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return self.shapes[name]
            batch = next(iter(self.shapes.values()))[0]  # the dynamic dimension of these models
            return tuple(batch if d == -1 else d for d in self.engine.get_tensor_shape(name))

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream_handle):
            record("execute_async_v3", stream_handle)
            self.streams.add(stream_handle)
            names = [t[0] for t in self.engine.io]
            missing = [n for n in names if n not in self.addresses]
            assert not missing, f"execute_async_v3 without addresses for {missing}"  # TensorRT fails too
            feeds = {n: self._buffer(n).copy() for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
            outputs = [n for n in names if n not in feeds]
            for name, value in zip(outputs, self.engine.run(feeds, outputs), strict=True):
                out = self._buffer(name)
                assert value.shape == out.shape, (name, value.shape, out.shape)
                out[...] = value
            return True

        def _buffer(self, name):
            """The numpy view of the memory bound to `name` (its shape and type from the engine)."""
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = self.get_tensor_shape(name)
            raw = (ctypes.c_byte * (int(np.prod(shape)) * dtype.itemsize)).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dtype).reshape(shape)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            record("deserialize_cuda_engine")
            if not bytes(data).startswith(b"FAKE-ENGINE "):
                return None  # as TensorRT answers bytes it cannot read
            trt.engines.append(Engine(json.loads(bytes(data)[len(b"FAKE-ENGINE "):])))
            return trt.engines[-1]

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def value_infos(model) -> dict:
    """Every tensor's type and shape, by name: as recorded (our exports run shape inference before
    they publish), else from ONNX shape inference (a second on AlexNet, so only when needed)."""
    g = model.graph
    typed = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    if all(o in typed for n in g.node for o in n.output if o):
        return typed
    g = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v for v in [*g.input, *g.value_info, *g.output]}


def onnx_session(path: str, outputs: list[str]):
    """An ONNX Runtime session of the ONNX at `path` that also outputs `outputs`."""
    import onnxruntime as ort

    model = onnx.load(path)
    typed = value_infos(model)
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(typed[n] for n in outputs if n not in present)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def calls_named(trt: types.ModuleType, name: str) -> list[tuple]:
    return [args for n, args in trt.calls if n == name]
