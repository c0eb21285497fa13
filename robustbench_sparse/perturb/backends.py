"""The attack libraries an attack can run through (an attack's definition says which it has)."""

BACKENDS = ("torchattacks", "foolbox")
