"""A frame in, throttle and steering out: preprocessing, the predictor (TensorFlow or ONNX
Runtime) and the Convcam picture."""
