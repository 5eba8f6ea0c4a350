"""Shape bias and human-likeness: Geirhos et al.'s cue-conflict, edge and silhouette stimuli and bethgelab's
model-vs-human sets, scored in their 16-category task exactly as model-vs-human scores them.

Registered in ``robustcnn.benchmarks.BENCHMARKS`` (``--dataset cue-conflict`` etc.; the suite finds them by their
folder names). See TEST.md for where to get the stimuli, the protocol and published reference values.
"""
from __future__ import annotations

from .categories import (CATEGORIES, CATEGORY_CLASS_INDICES, NUM_CATEGORIES, SixteenClassReduce,
                         sixteen_class_probabilities, sixteen_class_probabilities_numpy)
from .experiments import DEFAULT_SETS, MODEL_VS_HUMAN_SETS, SetSpec
from .metrics import (Trial, accuracy, benchmark_means, consistency, decide, human_likeness, human_shape_bias,
                      read_human_trials, shape_bias_results)
from .sets import (PARAMETRIC_BENCHMARKS, SHAPE_AND_HUMAN_BENCHMARKS, SKETCH, STYLIZED, CueConflict, Edges,
                   SessionSet, Silhouettes, SixteenClassBenchmark, StimulusSet)

__all__ = ['CATEGORIES', 'CATEGORY_CLASS_INDICES', 'NUM_CATEGORIES', 'SixteenClassReduce',
           'sixteen_class_probabilities', 'sixteen_class_probabilities_numpy', 'DEFAULT_SETS', 'MODEL_VS_HUMAN_SETS',
           'SetSpec', 'Trial', 'accuracy', 'benchmark_means', 'human_shape_bias', 'consistency', 'decide',
           'human_likeness', 'read_human_trials', 'shape_bias_results', 'PARAMETRIC_BENCHMARKS',
           'SHAPE_AND_HUMAN_BENCHMARKS', 'SKETCH', 'STYLIZED',
           'CueConflict', 'Edges', 'SessionSet', 'Silhouettes', 'SixteenClassBenchmark', 'StimulusSet']
