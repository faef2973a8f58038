"""OpenVINO: IR export (fp32, NNCF int8, and with --weight-compression the NNCF weight-compressed
int8w / int4w / int4w-a8 IRs) and the CPU runners (f32 and bf16 compute)."""
