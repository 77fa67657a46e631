"""DeSRA artifact detection: indicator D, semantic adjustment, morphology and the detector."""
from desra.detection.ade20k import ADE20K_CLASSES  # noqa: F401
from desra.detection.detector import detect_artifacts  # noqa: F401
from desra.detection.indicator import texture_similarity  # noqa: F401
from desra.detection.morphology import clean_mask  # noqa: F401
from desra.detection.semantics import ClassHistogram, load_class_weights, read_class_file, semantic_adjust  # noqa: F401
