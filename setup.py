"""gacd_tf: Guided Adversarial Contrastive Distillation in Keras 3 / TensorFlow."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "gacd_tf" / "__init__.py").read_text())[1]

# gacd-analyze: pictures (Agg, headless) and t-SNE.
ANALYSIS = ["matplotlib>=3.8", "scikit-learn>=1.4"]
# pytest-xdist: the tests run on every core (pytest.ini), one test file per worker.
# gacd-export --format=tflite, gacd-evaluate on .tflite files: the LiteRT interpreter
# (22 MB wheel; installs beside tensorflow-cpu 2.21 without changing numpy or protobuf).
TFLITE = ["ai-edge-litert>=2.3"]
TEST = ["pytest>=8", "pytest-xdist>=3.5", "POT>=0.9.4"] + ANALYSIS + TFLITE

setup(
    name="gacd_tf",
    version=VERSION,
    description="Distil adversarial robustness into any student (GACD, ARD, KD) with Keras 3",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["gacd_tf", "gacd_tf.*"]),
    install_requires=[
        "absl-py>=2.1",
        "numpy>=1.26",
        "keras>=3.12",
        "tensorflow-datasets>=4.9.6",
        "tensorboard>=2.20",  # no longer pulled in by TensorFlow 2.21
        "importlib_resources",  # tensorflow-datasets 4.9 downloads need it but do not declare it
    ],
    extras_require={
        # TensorFlow itself comes through one of these two extras.
        "cpu": ["tensorflow-cpu==2.21.*"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        "test": TEST,
        "analysis": ANALYSIS,
        "tflite": TFLITE,
        # gacd-export --format=onnx (tf2onnx 1.17 works with TF 2.21, numpy 2, protobuf 7).
        "onnx": ["tf2onnx>=1.17", "onnx>=1.17", "onnxruntime>=1.20"],
        # export/grpc_client.py. tensorflow-serving-api 2.21 declares a dependency on
        # `tensorflow`, which would be installed over tensorflow-cpu, so it is not
        # listed here: add it with `pip install --no-deps "tensorflow-serving-api==2.21.*"`
        # (docs/serving.md); with the gpu extra a plain install works.
        "serving": ["grpcio>=1.60"],
        # gacd-import: PyTorch / RobustBench checkpoints as Keras models (docs/robustbench.md).
        # robustbench is installed for its architecture files and model lists only: as a
        # package it cannot be imported without autoattack (GitHub only) and pkg_resources.
        # The PyPI torch wheel brings ~3 GB of CUDA libraries; a CPU-only torch is enough.
        "torch": ["torch>=2.4", "safetensors>=0.4", "robustbench==1.1.1"],
        "dev": TEST + ["ruff"],
    },
    entry_points={
        "console_scripts": [
            "gacd-train-teacher=gacd_tf.programs.train_teacher:entry_point",
            "gacd-evaluate=gacd_tf.programs.evaluate:entry_point",
            "gacd-distill=gacd_tf.programs.distill:entry_point",
            "gacd-export=gacd_tf.programs.export:entry_point",
            "gacd-analyze=gacd_tf.programs.analyze:entry_point",
            "gacd-reproduce=gacd_tf.programs.reproduce:entry_point",
            "gacd-import=gacd_tf.programs.import_model:entry_point",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
