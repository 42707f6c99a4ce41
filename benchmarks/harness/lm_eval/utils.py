"""lm-eval's own AIME scoring (the string after the last \\boxed, compared after its normalisation), which the
task files here name as `utils.process_results`. Imported by lm-eval from its own environment, not the project's."""

from lm_eval.tasks.aime.utils import process_results  # noqa: F401
