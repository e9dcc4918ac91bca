"""Seed corpora for the fuzz targets (fuzz/corpus/<target>/), small valid inputs of each
format. Needs Python 3 with numpy and Pillow; no torch: the .pt pickles are written through
stand-in `torch` modules so that the opcodes are exactly those torch.save emits.

    python3 fuzz/make_seeds.py
"""
import gzip, io, json, os, pickle, struct, sys, types, zipfile
from collections import OrderedDict

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(ROOT, "..", "guided-diffusion", "tests", "golden")


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- stand-in torch for pickling ---------------------------------------------------------
torch = types.ModuleType("torch")
tutils = types.ModuleType("torch._utils")
sys.modules["torch"], sys.modules["torch._utils"] = torch, tutils


def _rebuild_tensor_v2(*a):
    raise RuntimeError


def _rebuild_parameter(*a):
    raise RuntimeError


_rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
tutils._rebuild_tensor_v2, tutils._rebuild_parameter = _rebuild_tensor_v2, _rebuild_parameter
for n in ["FloatStorage", "HalfStorage", "DoubleStorage", "LongStorage"]:
    c = type(n, (), {"__module__": "torch"})
    setattr(torch, n, c)


class Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class T:
    def __init__(self, storage, offset, size, stride, param=False):
        self.a = (storage, offset, size, stride)
        self.param = param

    def __reduce__(self):
        inner = (_rebuild_tensor_v2, self.a + (False, OrderedDict()))
        if self.param:
            return (_rebuild_parameter, (Tensorish(inner), False, OrderedDict()))
        return inner


class Tensorish:
    def __init__(self, r):
        self.r = r

    def __reduce__(self):
        return self.r


class P(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel)
        return None


def pt(entries, storages, proto=2, big=False, deflate=False):
    buf = io.BytesIO()
    P(buf, protocol=proto).dump(entries)
    z = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(z, "w", method) as f:
        f.writestr("archive/data.pkl", buf.getvalue())
        f.writestr("archive/byteorder", "big" if big else "little")
        for k, v in storages.items():
            f.writestr(f"archive/data/{k}", v)
        f.writestr("archive/version", "3\n")
    return buf.getvalue(), z.getvalue()


s0 = Storage("FloatStorage", "0", 6)
s1 = Storage("HalfStorage", "1", 4)
sd = OrderedDict()
sd["a.weight"] = T(s0, 0, (2, 3), (3, 1))
sd["a.t"] = T(s0, 0, (3, 2), (1, 3))
sd["b"] = T(s1, 1, (3,), (1,), param=True)
sd["c"] = T(s0, 2, (), ())
meta = OrderedDict([("", {"version": 1}), ("a", {"version": 1})])
data = {"0": np.arange(6, dtype="<f4").tobytes(), "1": np.ones(4, dtype="<f2").tobytes()}
for proto in (2, 4):
    pkl, z = pt(sd, data, proto)
    put("pickle", f"state_dict_p{proto}.pkl", pkl)
    put("pt_zip", f"state_dict_p{proto}.pt", z)
pkl, z = pt({"model": sd, "epoch": 3, "f": 1.5, "l": [1, 2, 3], "meta": meta}, data, 2, deflate=True)
put("pickle", "nested.pkl", pkl)
put("pt_zip", "nested_deflate.pt", z)
_, z = pt(sd, {k: np.frombuffer(v, dtype="u1").tobytes() for k, v in data.items()}, 2, big=True)
put("pt_zip", "big_endian.pt", z)

# --- safetensors ---------------------------------------------------------------------------
def st(tensors, meta=None):
    header, blobs, off = {}, b"", 0
    for name, arr, dt in tensors:
        b = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs += b
        off += len(b)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + blobs


model_json = json.load(open(os.path.join(GOLDEN, "model_unet_b.json")))
cfg = {"builder": model_json["builder"], "kwargs": model_json["kwargs"]}
put("safetensors", "plain.safetensors", st([("w", np.arange(6, dtype="<f4").reshape(2, 3), "F32"),
                                            ("h", np.ones(2, dtype="<f2"), "F16")]))
put("safetensors", "with_config.safetensors",
    st([("time_embed.0.weight", np.zeros((4, 2), dtype="<f4"), "F32")],
       {"gdiff.model_config": json.dumps(cfg), "gdiff.step": "3"}))

# --- npy / npz -----------------------------------------------------------------------------
def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


put("npy", "f4.npy", npy(np.arange(12, dtype="<f4").reshape(1, 3, 2, 2)))
put("npy", "be.npy", npy(np.arange(4, dtype=">f8")))
put("npy", "fortran.npy", npy(np.asfortranarray(np.arange(6, dtype="<i2").reshape(2, 3))))
for name, comp in (("images.npz", False), ("compressed.npz", True)):
    b = io.BytesIO()
    arrays = dict(arr_0=np.arange(2 * 4 * 4 * 3, dtype="u1").reshape(2, 4, 4, 3),
                  arr_1=np.array([3, 7], dtype="<i8"), mu=np.zeros(3), sigma=np.eye(3))
    (np.savez_compressed if comp else np.savez)(b, **arrays)
    put("npy", name, b.getvalue())

# --- IDX (first byte: 0 plain, 1 gzip) -------------------------------------------------------
idx = bytes([0, 0, 8, 3]) + struct.pack(">III", 2, 3, 3) + bytes(range(18))
put("idx", "plain", b"\x00" + idx)
put("idx", "gz", b"\x01" + gzip.compress(idx))
put("idx", "labels", b"\x00" + bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes([1, 2, 3, 4]))

# --- config JSON ---------------------------------------------------------------------------
for f in sorted(os.listdir(GOLDEN)):
    if f.startswith("model_") and f.endswith(".json"):
        j = json.load(open(os.path.join(GOLDEN, f)))
        put("config_json", f, json.dumps({"builder": j["builder"], "kwargs": j["kwargs"]}).encode())
        put("config_json", "kwargs_" + f, json.dumps(j["kwargs"]).encode())
put("config_json", "diffusion.json", json.dumps(
    {"steps": 100, "noise_schedule": "cosine", "timestep_respacing": "ddim10", "learn_sigma": True,
     "sigma_small": False, "use_kl": False, "predict_xstart": False, "rescale_timesteps": False,
     "rescale_learned_sigmas": False}).encode())

# --- images (first byte: channel choice) -----------------------------------------------------
rng = np.random.default_rng(0)
for mode, fmt in (("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"),
                  ("RGB", "JPEG"), ("L", "JPEG"), ("P", "GIF")):
    shape = (9, 7) if mode in ("L", "P") else (9, 7, len(mode))
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode if mode != "P" else "L")
    if mode == "P":
        img = img.convert("P")
    b = io.BytesIO()
    img.save(b, fmt)
    put("image", f"{mode}.{fmt.lower()}", bytes([len(mode) % 4]) + b.getvalue())
print("seeds written to", os.path.join(ROOT, "corpus"))
