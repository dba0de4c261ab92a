"""Tokenizer models: MAGVIT-2 encoder/decoder, the lookup-free quantizer, and loading released checkpoints."""
from openmagvit2.models.decoder import Decoder
from openmagvit2.models.encoder import Encoder
from openmagvit2.models.presets import MODEL_PRESETS, model_preset
from openmagvit2.models.quantizer import LFQ, LFQOutput
from openmagvit2.models.tokenizer import Tokenizer, TokenizerEncoding, TokenizerOutput
from openmagvit2.models.video_config import VIDEO_PRESETS, VideoModelConfig
from openmagvit2.models.video_tokenizer import VideoEncoding, VideoTokenizer, VideoTokenizerOutput

__all__ = ["LFQ", "MODEL_PRESETS", "Decoder", "Encoder", "LFQOutput", "Tokenizer", "TokenizerEncoding",
           "TokenizerOutput", "VIDEO_PRESETS", "VideoEncoding", "VideoModelConfig", "VideoTokenizer",
           "VideoTokenizerOutput", "model_preset"]
