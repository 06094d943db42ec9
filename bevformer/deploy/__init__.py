"""Deployment: ONNX export of the inference path (:mod:`bevformer.deploy.onnx_export`)."""

from bevformer.deploy.onnx_export import ExportError, ExportModel, decode_topk, export_onnx

__all__ = ["ExportError", "ExportModel", "decode_topk", "export_onnx"]
