//! The modality split of a usage: audio, text and image tokens.
//!
//! Audio and image tokens cost several times what text tokens cost, so a
//! usage's details decide its price (`genai::pricing`). The APIs spell the
//! details three ways (`prompt_tokens_details`, `input_tokens_details`,
//! `input_token_details`, and the same for output) with the same members;
//! they are read here, each count on its own (see `genai::lenient`).

use serde::de::MapAccess;

use super::lenient::{Count, Flaws, FromJson, Lenient, members};

/// The modality split of a usage (`*_tokens_details` / `*_token_details`):
/// each count is part of `input_tokens` or `output_tokens`, and priced at
/// its own rate when the price table has one (`genai::pricing`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenDetails {
    pub input_audio: Option<u64>,
    pub input_text: Option<u64>,
    pub input_image: Option<u64>,
    /// Parts of the cached input (`cached_tokens_details`).
    pub cached_audio: Option<u64>,
    pub cached_text: Option<u64>,
    pub cached_image: Option<u64>,
    pub output_audio: Option<u64>,
    pub output_text: Option<u64>,
    pub output_image: Option<u64>,
}

/// Counts by modality, as every details object spells them.
#[derive(Default)]
pub(crate) struct Modalities {
    pub(crate) audio_tokens: Lenient<Count>,
    pub(crate) text_tokens: Lenient<Count>,
    pub(crate) image_tokens: Lenient<Count>,
}

impl Modalities {
    pub(crate) fn flawed(&self) -> bool {
        self.audio_tokens.flawed() || self.text_tokens.flawed() || self.image_tokens.flawed()
    }
}

#[derive(Default)]
pub(crate) struct InputDetails {
    pub(crate) cached_tokens: Lenient<Count>,
    pub(crate) split: Modalities,
    pub(crate) cached_tokens_details: Lenient<CachedDetails>,
}

impl<'de> FromJson<'de> for InputDetails {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = InputDetails::default();
        members!(map {
            "cached_tokens" => d.cached_tokens,
            "audio_tokens" => d.split.audio_tokens,
            "text_tokens" => d.split.text_tokens,
            "image_tokens" => d.split.image_tokens,
            "cached_tokens_details" => d.cached_tokens_details,
        });
        Ok(Some(d))
    }
}

impl Flaws for InputDetails {
    fn flawed(&self) -> bool {
        self.cached_tokens.flawed() || self.split.flawed() || self.cached_tokens_details.flawed()
    }
}

#[derive(Default)]
pub(crate) struct CachedDetails(pub(crate) Modalities);

impl<'de> FromJson<'de> for CachedDetails {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = CachedDetails::default();
        members!(map {
            "audio_tokens" => d.0.audio_tokens,
            "text_tokens" => d.0.text_tokens,
            "image_tokens" => d.0.image_tokens,
        });
        Ok(Some(d))
    }
}

impl Flaws for CachedDetails {
    fn flawed(&self) -> bool {
        self.0.flawed()
    }
}

#[derive(Default)]
pub(crate) struct OutputDetails {
    pub(crate) reasoning_tokens: Lenient<Count>,
    pub(crate) split: Modalities,
}

impl<'de> FromJson<'de> for OutputDetails {
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut d = OutputDetails::default();
        members!(map {
            "reasoning_tokens" => d.reasoning_tokens,
            "audio_tokens" => d.split.audio_tokens,
            "text_tokens" => d.split.text_tokens,
            "image_tokens" => d.split.image_tokens,
        });
        Ok(Some(d))
    }
}

impl Flaws for OutputDetails {
    fn flawed(&self) -> bool {
        self.reasoning_tokens.flawed() || self.split.flawed()
    }
}
