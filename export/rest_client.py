"""Query a TF Serving REST endpoint serving a gacd-export SavedModel (urllib only).

Two request shapes:

* ``serving_default``: ``{"signature_name": "serving_default", "instances":
  [image, ...]}`` with each image a nested list ``[H, W, 3]`` of floats in [0, 1];
* ``encoded_images``: ``{"signature_name": "encoded_images", "instances":
  [{"b64": "<base64 PNG/JPEG bytes>"}, ...]}``; the server decodes and resizes.

The reply is ``{"predictions": [{"probabilities": [...], "logits": [...],
"class_ids": k}, ...]}``, one entry per image.

Example:
    python export/rest_client.py --url=http://localhost:8501/v1/models/student --npy=batch.npy
    python export/rest_client.py --url=http://localhost:8501/v1/models/student cat.png dog.jpg
"""

import argparse
import base64
import json
import urllib.request


def instances_request(images):
    """The JSON body for ``serving_default``: ``images`` float [B, H, W, 3] in [0, 1]."""
    return {"signature_name": "serving_default",
            "instances": [image.tolist() if hasattr(image, "tolist") else image
                          for image in images]}


def encoded_request(encoded_images):
    """The JSON body for ``encoded_images``: a list of PNG/JPEG ``bytes``."""
    return {"signature_name": "encoded_images",
            "instances": [{"b64": base64.b64encode(data).decode("ascii")}
                          for data in encoded_images]}


def predict(url, body, timeout=30):
    """POSTs ``body`` to ``URL:predict`` (``url`` = http://HOST:8501/v1/models/NAME)."""
    request = urllib.request.Request(
        url.rstrip("/") + ":predict", data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))["predictions"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True,
                        help="http://HOST:8501/v1/models/NAME (add /versions/N for one version)")
    parser.add_argument("--npy", help="float32 [B, H, W, 3] images in [0, 1] (serving_default)")
    parser.add_argument("files", nargs="*", help="PNG/JPEG files (encoded_images)")
    args = parser.parse_args()
    if bool(args.npy) == bool(args.files):
        parser.error("pass either --npy=FILE.npy or image files")
    if args.npy:
        import numpy as np

        body = instances_request(np.load(args.npy))
        names = [f"{args.npy}[{i}]" for i in range(len(body["instances"]))]
    else:
        body = encoded_request([open(path, "rb").read() for path in args.files])
        names = args.files
    for name, prediction in zip(names, predict(args.url, body)):
        print(f"{name}: class {prediction['class_ids']} "
              f"(p={max(prediction['probabilities']):.3f})")


if __name__ == "__main__":
    main()
