"""The device the engine computes on: the first CUDA device torch sees (a worker is given one GPU through
CUDA_VISIBLE_DEVICES), else the CPU. Its name goes into every job's report and the worker's /metrics.
torch is imported on first use, so importing this module stays cheap."""
from __future__ import annotations


def select():
    import torch
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device=None) -> str:
    import torch
    device = device or select()
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def describe() -> dict:
    """For the report: the device's name and type, torch's version, and on CUDA its CUDA version and memory."""
    import torch
    device = select()
    out = {"name": device_name(device), "type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update({"cuda": torch.version.cuda, "memoryBytes": int(props.total_memory),
                    "capability": f"{props.major}.{props.minor}"})
    return out


if __name__ == "__main__":
    print(device_name())
