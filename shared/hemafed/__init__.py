"""HemaFed shared package.

Everything the hospital agent, the aggregator and the metrics service have in common:
API schemas, the one model-exchange type, settings helpers, dataset loading and splitting,
and the model factory. TensorFlow is imported only by :mod:`hemafed.models` and
:mod:`hemafed.training`; everything else is importable without it.
"""

__version__ = "0.1.0"
