//! `tokenizer.json` through the `tokenizers` crate, and the chat template rendered as transformers renders it.
//!
//! A [`Tokenizer`] is loaded from a Hugging Face model directory ([`Tokenizer::from_dir`]) or
//! from the texts of its files ([`Tokenizer::from_parts`], for tokenizers embedded in the
//! binary). Encoding never adds special tokens (as `add_special_tokens=False`); special
//! tokens written in the text, such as `<|im_start|>` in a rendered chat, are still
//! recognised and encoded as their ids, as transformers' `apply_chat_template(tokenize=True)`
//! does. The chat template comes from `chat_template.jinja` when that file exists, else from
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
//! which `default` is used).
//!
//! The files are untrusted: `tokenizers` parses `tokenizer.json`, and this module reads
//! `tokenizer_config.json` through `get`, each error naming the field (the lint below
//! keeps it so).
#![deny(clippy::indexing_slicing)]

mod chat;
mod chat_limits;

use chat::ChatTemplate;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Everything that can go wrong loading a tokenizer or using it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer.json` is not a tokenizer the `tokenizers` crate can load.
    #[error("cannot load the tokenizer from {origin}")]
    Load {
        origin: String,
        #[source]
        source: tokenizers::Error,
    },
    /// `tokenizer_config.json` is not valid JSON.
    #[error("{origin}: tokenizer_config.json is not valid JSON")]
    ConfigJson {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
    /// A field of `tokenizer_config.json` has an unexpected shape.
    #[error("{origin}: tokenizer_config.json field `{field}`: {reason}")]
    ConfigField {
        origin: String,
        field: &'static str,
        reason: String,
    },
    /// A chat was asked for but the tokenizer has no chat template.
    #[error(
        "{origin} has no chat template (neither chat_template.jinja nor `chat_template` in tokenizer_config.json)"
    )]
    NoChatTemplate { origin: String },
    /// The chat template failed to compile.
    #[error("{origin}: the chat template does not compile")]
    TemplateSyntax {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
    /// The chat template failed while rendering (including its own `raise_exception`).
    #[error("rendering the chat template failed")]
    TemplateRender {
        #[source]
        source: minijinja::Error,
    },
    /// Encoding text failed.
    #[error("cannot encode the text")]
    Encode {
        #[source]
        source: tokenizers::Error,
    },
    /// A GGUF file's tokenizer metadata could not be read.
    #[error("cannot build the tokenizer from a GGUF file")]
    Gguf {
        #[source]
        source: crate::gguf::GgufError,
    },
    /// Decoding ids failed (for example an id outside the vocabulary).
    #[error("cannot decode ids (vocabulary has {vocab_size} tokens)")]
    Decode {
        vocab_size: usize,
        #[source]
        source: tokenizers::Error,
    },
}

/// Token ids with the byte range of the text each came from.
pub type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Special tokens named in `tokenizer_config.json`, as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub unk: Option<String>,
}

/// One chat message, for the common case of role and text content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with its special tokens and (optional) chat template.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    chat_template: Option<ChatTemplate>,
    origin: String,
}

fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `tokenizer.json` through the `tokenizers` crate, which panics (`expect("Helper")` in its
/// decoder deserializer, 0.23.2) when a field holds malformed JSON: the syntax is checked
/// first, and a panic the crate still raises becomes an error, not a dead worker.
fn load_tokenizer_json(text: &str) -> Result<tokenizers::Tokenizer, tokenizers::Error> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)?;
    std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(text.as_bytes()))
        .unwrap_or_else(|_| Err("the tokenizers crate panicked while loading this file".into()))
}

/// A special token in `tokenizer_config.json`: a string, an AddedToken dict, or null.
fn token_field(
    config: &serde_json::Value,
    field: &'static str,
    origin: &str,
) -> Result<Option<String>, TokenizerError> {
    match config.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(map)) => match map.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::ConfigField {
                origin: origin.to_owned(),
                field,
                reason: "an AddedToken object needs a string `content`".to_owned(),
            }),
        },
        Some(other) => Err(TokenizerError::ConfigField {
            origin: origin.to_owned(),
            field,
            reason: format!("expected a string or null, found {other}"),
        }),
    }
}

/// `chat_template` in `tokenizer_config.json`: a string or `[{name, template}, …]`.
fn template_field(
    config: &serde_json::Value,
    origin: &str,
) -> Result<Option<String>, TokenizerError> {
    let bad = |reason: String| TokenizerError::ConfigField {
        origin: origin.to_owned(),
        field: "chat_template",
        reason,
    };
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |want: &str| {
                list.iter().find_map(|entry| {
                    (entry.get("name")?.as_str()? == want)
                        .then(|| entry.get("template")?.as_str().map(str::to_owned))
                        .flatten()
                })
            };
            named("default").map(Some).ok_or_else(|| {
                bad(
                    "a list of templates needs one named `default` with a string `template`"
                        .to_owned(),
                )
            })
        }
        Some(other) => Err(bad(format!("expected a string or a list, found {other}"))),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (optional) and `chat_template.jinja`
    /// (optional) from a model directory.
    /// A `.gguf` file is accepted too: its tokenizer metadata is built into the same
    /// files ([`crate::gguf::tokenizer`]).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        if crate::gguf::is_gguf(dir) {
            return Self::from_gguf(dir);
        }
        let json_path = dir.join("tokenizer.json");
        let json = std::fs::read_to_string(&json_path).map_err(|source| TokenizerError::Io {
            path: json_path.clone(),
            source,
        })?;
        let config = read_optional(&dir.join("tokenizer_config.json"))?;
        let template = read_optional(&dir.join("chat_template.jinja"))?;
        Self::from_parts(
            &json,
            config.as_deref(),
            template.as_deref(),
            &dir.display().to_string(),
        )
    }

    /// Builds a tokenizer from the texts of `tokenizer.json`, `tokenizer_config.json` and
    /// `chat_template.jinja`; `origin` names where they came from in error messages. A
    /// `chat_template` argument overrides the config's template, as the file does in
    /// transformers.
    pub fn from_parts(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
        chat_template: Option<&str>,
        origin: &str,
    ) -> Result<Self, TokenizerError> {
        let inner = load_tokenizer_json(tokenizer_json).map_err(|source| TokenizerError::Load {
            origin: origin.to_owned(),
            source,
        })?;
        let config: serde_json::Value = match tokenizer_config_json {
            Some(text) => {
                serde_json::from_str(text).map_err(|source| TokenizerError::ConfigJson {
                    origin: origin.to_owned(),
                    source,
                })?
            }
            None => serde_json::Value::Null,
        };
        let special = SpecialTokens {
            bos: token_field(&config, "bos_token", origin)?,
            eos: token_field(&config, "eos_token", origin)?,
            pad: token_field(&config, "pad_token", origin)?,
            unk: token_field(&config, "unk_token", origin)?,
        };
        let source = match chat_template {
            Some(t) => Some(t.to_owned()),
            None => template_field(&config, origin)?,
        };
        let chat_template = source
            .map(|src| {
                ChatTemplate::new(&src).map_err(|source| TokenizerError::TemplateSyntax {
                    origin: origin.to_owned(),
                    source,
                })
            })
            .transpose()?;
        Ok(Self {
            inner,
            special,
            chat_template,
            origin: origin.to_owned(),
        })
    }

    /// The tokenizer and chat template inside a GGUF file.
    pub fn from_gguf(path: &Path) -> Result<Self, TokenizerError> {
        let gguf = |source| TokenizerError::Gguf { source };
        let file = crate::gguf::GgufFile::open(path).map_err(gguf)?;
        let files = crate::gguf::tokenizer::tokenizer_files(&file).map_err(gguf)?;
        Self::from_parts(
            &files.tokenizer_json.to_string(),
            Some(&files.tokenizer_config.to_string()),
            None,
            &path.display().to_string(),
        )
    }

    /// Where this tokenizer was loaded from (a directory, or a name for embedded ones).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special tokens named in `tokenizer_config.json`.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The id of the configured `eos_token`, if it has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.special.eos.as_deref().and_then(|t| self.token_id(t))
    }

    /// The id of the configured `pad_token`, if it has one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.special.pad.as_deref().and_then(|t| self.token_id(t))
    }

    /// Whether a chat template is available.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Token ids of `text`, without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|source| TokenizerError::Encode { source })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with the tokenizer's special tokens added by its post-processor
    /// (a BOS for Llama tokenizers, nothing for byte-level ones), as `tokenizer(text)` does
    /// in transformers: how a plain-text prompt is encoded for generation.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode_fast(text, true)
            .map_err(|source| TokenizerError::Encode { source })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with the byte range of `text` each token came from.
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsWithOffsets, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|source| TokenizerError::Encode { source })?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`; special tokens are left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| TokenizerError::Decode {
                vocab_size: self.vocab_size(),
                source,
            })
    }

    /// Renders `messages` through the chat template as transformers'
    /// `apply_chat_template(tokenize=False)` does. The context holds `messages`,
    /// `add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, …).
    pub fn render_chat<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template =
            self.chat_template
                .as_ref()
                .ok_or_else(|| TokenizerError::NoChatTemplate {
                    origin: self.origin.clone(),
                })?;
        let mut ctx = std::collections::BTreeMap::new();
        let value = minijinja::Value::from_serialize;
        ctx.insert("messages", value(messages));
        ctx.insert(
            "add_generation_prompt",
            minijinja::Value::from(add_generation_prompt),
        );
        for (name, token) in [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("pad_token", &self.special.pad),
            ("unk_token", &self.special.unk),
        ] {
            if let Some(t) = token {
                ctx.insert(name, minijinja::Value::from(t.as_str()));
            }
        }
        template
            .render(minijinja::Value::from(ctx))
            .map_err(|source| TokenizerError::TemplateRender { source })
    }

    /// Ids of the rendered chat, special tokens in it encoded as their ids (as
    /// `apply_chat_template(tokenize=True)`).
    pub fn encode_chat<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.render_chat(messages, add_generation_prompt)?)
    }
}

/// Formats a JSON value as Python's `json.dumps` (`", "` and `": "` separators, non-ASCII
/// kept); what chat templates print for tool arguments.
pub fn python_json(value: &serde_json::Value) -> String {
    chat::write_json_python(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"{"version":"1.0","truncation":null,"padding":null,
      "added_tokens":[{"id":0,"content":"<e>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
      "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
      "model":{"type":"WordLevel","vocab":{"<e>":0,"a":1,"b":2,"[UNK]":3},"unk_token":"[UNK]"}}"#;

    #[test]
    fn config_fields_and_template_list() {
        let config = r#"{"eos_token": {"content": "<e>"}, "bos_token": null,
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ eos_token }}"}]}"#;
        let tok = Tokenizer::from_parts(MINI, Some(config), None, "mini").unwrap();
        assert_eq!(tok.special_tokens().eos.as_deref(), Some("<e>"));
        assert_eq!(tok.eos_token_id(), Some(0));
        let msgs: [ChatMessage; 0] = [];
        assert_eq!(tok.render_chat(&msgs, false).unwrap(), "<e>");
        assert_eq!(tok.encode("a <e>b").unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn malformed_json_inside_a_field_is_an_error_not_a_panic() {
        // Found by the `tokenizer_json` fuzz target: tokenizers 0.23.2 panics
        // (`expect("Helper")`) on a syntax error inside `decoder`.
        let bad = MINI.replace(r#""decoder":null"#, r#""decoder":vocab null"#);
        assert_ne!(bad, MINI);
        let err = Tokenizer::from_parts(&bad, None, None, "mini").unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("cannot load the tokenizer from mini"), "{msg}");
        assert!(msg.contains("expected value at line 3"), "{msg}");
    }

    #[test]
    fn bad_config_names_the_field() {
        let err =
            Tokenizer::from_parts(MINI, Some(r#"{"eos_token": 3}"#), None, "mini").unwrap_err();
        assert!(err.to_string().contains("eos_token"), "{err}");
        let err =
            Tokenizer::from_parts(MINI, Some(r#"{"chat_template": 3}"#), None, "mini").unwrap_err();
        assert!(err.to_string().contains("chat_template"), "{err}");
        let tok = Tokenizer::from_parts(MINI, None, None, "mini").unwrap();
        let err = tok
            .render_chat(&[ChatMessage::new("user", "a")], true)
            .unwrap_err();
        assert!(err.to_string().contains("no chat template"), "{err}");
    }
}
