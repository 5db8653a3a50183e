# A stand-in for torchvision, used ONLY when running diffusers' example training script in the interop
# tests: PyPI's torchvision does not import beside the local CPU torch 2.13.0 wheel ("operator
# torchvision::nms does not exist"), and the script needs nothing of it but the few transforms below.
