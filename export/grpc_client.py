"""Query TF Serving over gRPC (port 8500) with tensorflow-serving-api.

Install: ``pip install grpcio`` and ``pip install --no-deps
"tensorflow-serving-api==2.21.*"`` (its metadata requires the full
``tensorflow`` package, which would be installed over ``tensorflow-cpu``).

Example:
    python export/grpc_client.py --host=localhost:8500 --model=student --npy=batch.npy
    python export/grpc_client.py --host=localhost:8500 --model=student cat.png dog.jpg
"""

import argparse

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def predict(host, model, signature, images, timeout=30.0):
    """Calls ``signature`` of ``model``; ``images`` float32 [B, H, W, 3] or PNG/JPEG bytes.

    Returns:
        dict output name -> numpy array (``probabilities``, ``logits``, ``class_ids``).
    """
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(host))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if signature == "encoded_images":
        tensor = tf.make_tensor_proto(list(images), dtype=tf.string)
    else:
        tensor = tf.make_tensor_proto(np.asarray(images, np.float32))
    request.inputs["images"].CopyFrom(tensor)
    response = stub.Predict(request, timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost:8500")
    parser.add_argument("--model", required=True, help="the served model's name")
    parser.add_argument("--npy", help="float32 [B, H, W, 3] images in [0, 1] (serving_default)")
    parser.add_argument("files", nargs="*", help="PNG/JPEG files (encoded_images)")
    args = parser.parse_args()
    if bool(args.npy) == bool(args.files):
        parser.error("pass either --npy=FILE.npy or image files")
    if args.npy:
        names, images, signature = None, np.load(args.npy), "serving_default"
    else:
        names, signature = args.files, "encoded_images"
        images = [open(path, "rb").read() for path in args.files]
    outputs = predict(args.host, args.model, signature, images)
    names = names or [f"{args.npy}[{i}]" for i in range(len(outputs["class_ids"]))]
    for name, class_id, probs in zip(names, outputs["class_ids"], outputs["probabilities"]):
        print(f"{name}: class {class_id} (p={probs.max():.3f})")


if __name__ == "__main__":
    main()
