"""mtlguard.export: export generators to ONNX, TorchScript, torch.export (.pt2) and TensorRT."""
