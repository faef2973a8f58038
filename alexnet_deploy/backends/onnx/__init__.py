"""ONNX: the dynamo export, fp16 conversion and int8 QDQ quantization, with the card in metadata_props."""
