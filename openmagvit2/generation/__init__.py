"""Stage II: the class-conditional autoregressive generator over tokenizer ids (Open-MAGVIT2 AR models)."""
from openmagvit2.generation.config import ARModelConfig, ar_model_config, ar_model_names
from openmagvit2.generation.model import ARModel, ARModelOutput
from openmagvit2.generation.sampling import PUBLISHED_SAMPLING
from openmagvit2.generation.tokens import combine_subtokens, split_indices

__all__ = ["PUBLISHED_SAMPLING", "ARModel", "ARModelConfig", "ARModelOutput", "ar_model_config", "ar_model_names",
           "combine_subtokens", "split_indices"]
