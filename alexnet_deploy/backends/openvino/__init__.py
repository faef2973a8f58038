"""OpenVINO: IR export (fp32, fp16, NNCF int8) and the CPU runners (f32 and bf16 compute)."""
