"""The default model store: TorchServe archives built from the sources beside this file."""
