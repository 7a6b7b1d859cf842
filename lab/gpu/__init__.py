"""The GPU harness: one command that trains and measures the CIFAR-10 model on a lent GPU machine
and hands back what it made within the machine's limits (lab/gpu/README.md)."""
