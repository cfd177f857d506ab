"""Experiment configs for ``launch/train.py --config=configs/FILE.py[:VARIANT]`` (ml_collections).

default.py declares and documents every field once; cifar.py (``:cifar10_vgg16``, ...), imagenet.py
(``:resnet50``, ...) and fashion_mnist.py start from it and change only what differs. They import
each other as the package ``configs``, so the checkout's root must be importable: the launchers
put it on sys.path, pytest does through pyproject.toml.
"""
