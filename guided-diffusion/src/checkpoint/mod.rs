//! Weights in and out: PyTorch `.pt` state-dict zips (parsed, never executed) and safetensors.
