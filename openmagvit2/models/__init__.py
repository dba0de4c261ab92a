"""Tokenizer models: MAGVIT-2 encoder/decoder, the lookup-free quantizer, and loading released checkpoints."""
from openmagvit2.models.decoder import Decoder
from openmagvit2.models.encoder import Encoder
from openmagvit2.models.quantizer import LFQ, LFQOutput
from openmagvit2.models.tokenizer import Tokenizer, TokenizerEncoding, TokenizerOutput
from openmagvit2.models.video_config import VideoModelConfig, video_model_preset
from openmagvit2.models.video_tokenizer import VideoEncoding, VideoTokenizer, VideoTokenizerOutput

__all__ = ["LFQ", "Decoder", "Encoder", "LFQOutput", "Tokenizer", "TokenizerEncoding", "TokenizerOutput",
           "VideoEncoding", "VideoModelConfig", "VideoTokenizer", "VideoTokenizerOutput", "video_model_preset"]
