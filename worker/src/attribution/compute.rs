//! Attributing one finished answer: its gradient features with respect to the adapter that
//! served it (prompt + generated tokens, prompt masked, projected as the adapter's index
//! was), scored against the index, turned into shares and a fee split (see
//! [`super::record::compute_bits`]), with verbatim evidence from the training texts.
//! Blocking and CPU-heavy: it runs on the attribution thread, never on a serving path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tributary_attribution::fees::FeeConfig;
use tributary_attribution::verbatim::SuffixIndex;
use tributary_attribution::{AttributionIndex, Projector};
use tributary_ledger::adapters::{AdapterEntry, AdapterRegistry};
use tributary_ledger::datanet::{Datanets, WithdrawnIndex};
use tributary_ledger::store::Store;
use tributary_model::data::IGNORE_INDEX;
use tributary_model::decoder::CausalLm;
use tributary_model::features::GradientFeaturizer;
use tributary_model::lora::LoraAdapter;
use tributary_model::tokenizer::Tokenizer;
use tributary_model::train::TrainExample;
use tributary_protocol::inference::Prompt;

use super::AttrError;
use super::record::{
    AttributionRecord, ChoiceRecord, DataContext, FORMAT, Params, compute_bits, evidence,
    features_key, features_to_bytes, index_key,
};

/// Objects to store for a record: `(key, bytes)`.
pub type Objects = Vec<(String, Vec<u8>)>;

/// One choice of a finished answer, as the client received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerChoice {
    pub index: u32,
    pub text: String,
    /// `stop`, `length` or `cancelled`.
    pub finish: String,
    /// Generated tokens the engine reported (for a cancelled choice: 0; its text is
    /// re-tokenized to count what was sent).
    pub completion_tokens: u64,
}

/// A finished answer waiting for attribution (also the backlog object's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerJob {
    pub request_id: String,
    /// The adapter's digest (hex).
    pub adapter: String,
    pub prompt: Prompt,
    pub choices: Vec<AnswerChoice>,
    pub requester: Option<String>,
    pub answered_ms: u64,
    /// Failed attempts so far (a failed attribution is retried with back-off).
    #[serde(default)]
    pub attempts: u32,
    /// Not before this time (ms since the Unix epoch): the back-off of the next attempt.
    #[serde(default)]
    pub retry_at_ms: u64,
}

/// Prices: a default per token, per-adapter overrides, the builder's ratio.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    pub price_per_token: u64,
    pub per_adapter: HashMap<String, u64>,
    pub builder_ppm: u32,
}

impl Pricing {
    pub fn for_adapter(&self, adapter: &str) -> FeeConfig {
        FeeConfig {
            price_per_token: self
                .per_adapter
                .get(adapter)
                .copied()
                .unwrap_or(self.price_per_token),
            builder_ppm: self.builder_ppm,
        }
    }
}

/// What an adapter's attribution needs, loaded once.
pub struct Loaded {
    pub entry: AdapterEntry,
    pub adapter: LoraAdapter,
    pub index: AttributionIndex,
    pub centered: AttributionIndex,
    /// Contributors, order and duplicate clusters (withdrawals are read per answer).
    pub ctx: DataContext,
    /// `(name, version digest)` when trained on a datanet.
    pub datanet: Option<(String, String)>,
    pub data: String,
    pub data_version: String,
    /// Suffix array over the training texts and its documents' example ids.
    pub suffix: Option<(SuffixIndex, Vec<String>)>,
    /// The served adapter's per-example gradient and the index's projection, built once.
    pub featurizer: GradientFeaturizer,
    pub projector: Projector,
}

/// Loads adapters, indexes and data context, and attributes answers.
pub struct Attributor {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub eos: Option<u32>,
    pub base_digest: String,
    pub store: Store,
    pub rt: tokio::runtime::Handle,
    pub params: Params,
    pub pricing: Pricing,
    cache: HashMap<String, Arc<Loaded>>,
}

fn text_of_row(v: &serde_json::Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(ms) = v.get("messages").and_then(|m| m.as_array()) {
        for m in ms {
            if let Some(c) = m.get("content").and_then(|c| c.as_str()) {
                parts.push(c.to_owned());
            }
        }
    }
    for k in [
        "prompt",
        "completion",
        "instruction",
        "input",
        "output",
        "text",
    ] {
        if let Some(s) = v.get(k).and_then(|s| s.as_str()) {
            parts.push(s.to_owned());
        }
    }
    parts.join("\n")
}

impl Attributor {
    /// Loads the base model (a second copy, owned by the attribution thread).
    pub fn new(
        model_dir: &Path,
        store: Store,
        rt: tokio::runtime::Handle,
        params: Params,
        pricing: Pricing,
    ) -> Result<Self, AttrError> {
        let device = tributary_model::device::default_device();
        let model = CausalLm::load(model_dir, &device).map_err(AttrError::model)?;
        let tokenizer = Tokenizer::from_dir(model_dir).map_err(AttrError::model)?;
        let eos = tokenizer
            .eos_token_id()
            .or_else(|| model.generation_config().eos_token_ids.first().copied());
        let base_digest = tributary_model::source::base_model_digest(model_dir)
            .map(|d| tributary_protocol::Digest(d).to_hex())
            .map_err(AttrError::model)?;
        Ok(Self {
            model,
            tokenizer,
            eos,
            base_digest,
            store,
            rt,
            params,
            pricing,
            cache: HashMap::new(),
        })
    }

    fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, AttrError> {
        let k = object_store::path::Path::from(key);
        self.rt
            .block_on(self.store.get(&k))
            .map_err(AttrError::store)
    }

    /// The adapter's attribution state (cached); `None` when it has no index (adapters
    /// registered by upload rather than trained by a job here).
    pub fn load(&mut self, adapter: &str) -> Result<Option<Arc<Loaded>>, AttrError> {
        if let Some(l) = self.cache.get(adapter) {
            return Ok(Some(l.clone()));
        }
        let Some(bytes) = self.get(&index_key(adapter))? else {
            return Ok(None);
        };
        let index = AttributionIndex::from_bytes(&bytes).map_err(AttrError::math)?;
        let registry = AdapterRegistry::new(self.store.clone());
        let entry = self
            .rt
            .block_on(registry.get(adapter))
            .map_err(AttrError::store)?
            .ok_or_else(|| AttrError::Missing(format!("adapter {adapter} is not registered")))?;
        let files = self
            .rt
            .block_on(registry.files(&entry))
            .map_err(AttrError::store)?;
        let tmp = tempfile::tempdir().map_err(AttrError::io)?;
        for f in &files {
            std::fs::write(tmp.path().join(&f.name), &f.bytes).map_err(AttrError::io)?;
        }
        let device = tributary_model::device::default_device();
        let lora = LoraAdapter::load(tmp.path(), self.model.config(), &device)
            .map_err(AttrError::model)?;
        let (data, data_version, datanet) = super::rerun::data_source(&index);
        let manifest = match &datanet {
            Some((name, version)) => Some(
                self.rt
                    .block_on(Datanets::new(self.store.clone()).manifest(name, version))
                    .map_err(AttrError::store)?,
            ),
            None => None,
        };
        let ctx = super::rerun::data_context(&index, manifest.as_ref());
        let mut rows: Vec<serde_json::Value> = Vec::new();
        if let Some((name, version)) = &datanet {
            let nets = Datanets::new(self.store.clone());
            let mut buf = Vec::new();
            self.rt
                .block_on(nets.export(name, Some(version.as_str()), false, &mut buf))
                .map_err(AttrError::store)?;
            rows = buf
                .split(|&b| b == b'\n')
                .filter_map(|l| serde_json::from_slice(l).ok())
                .collect();
        } else if let Ok(text) = std::fs::read_to_string(&data) {
            rows = text
                .lines()
                .enumerate()
                .filter_map(|(i, l)| {
                    let mut v: serde_json::Value = serde_json::from_str(l).ok()?;
                    if let Some(o) = v.as_object_mut() {
                        o.entry("id")
                            .or_insert_with(|| serde_json::json!(format!("line-{}", i + 1)));
                    }
                    Some(v)
                })
                .collect();
        }
        let suffix = if rows.is_empty() {
            None
        } else {
            let mut docs = Vec::with_capacity(rows.len());
            let mut ids = Vec::with_capacity(rows.len());
            for r in &rows {
                let Some(id) = r.get("id").and_then(|v| v.as_str()) else {
                    continue;
                };
                docs.push(
                    self.tokenizer
                        .encode(&text_of_row(r))
                        .map_err(AttrError::model)?,
                );
                ids.push(id.to_string());
            }
            Some((SuffixIndex::new(&docs), ids))
        };
        let centered = index.centered();
        let featurizer = GradientFeaturizer::new(
            &self.model,
            &tributary_model::features::featurizer_adapter(&index, &lora),
        )
        .map_err(AttrError::model)?;
        let projector = Projector::new(
            index.header.projection,
            index.header.gradient_layout.clone(),
        )
        .map_err(AttrError::math)?;
        let loaded = Arc::new(Loaded {
            featurizer,
            projector,
            entry,
            adapter: lora,
            index,
            centered,
            ctx,
            datanet,
            data,
            data_version,
            suffix,
        });
        self.cache.insert(adapter.to_string(), loaded.clone());
        Ok(Some(loaded))
    }

    /// Withdrawals in force now (the datanet's head): applied by answer time.
    fn withdrawn(&self, loaded: &Loaded) -> Result<WithdrawnIndex, AttrError> {
        match &loaded.datanet {
            None => Ok(WithdrawnIndex::default()),
            Some((name, _)) => self
                .rt
                .block_on(super::rerun::withdrawn_now(&self.store, name)),
        }
    }

    /// The prompt's tokens, rendered as the engine renders them.
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, AttrError> {
        match prompt {
            Prompt::Chat(messages) => self.tokenizer.encode_chat(messages, true),
            Prompt::Text(text) => self.tokenizer.encode_prompt(text),
        }
        .map_err(AttrError::model)
    }

    /// The answer's tokens: its text re-tokenized, and the end-of-sequence token when it
    /// stopped (as training examples end).
    pub fn answer_tokens(&self, text: &str, finish: &str) -> Result<Vec<u32>, AttrError> {
        let mut ids = self.tokenizer.encode(text).map_err(AttrError::model)?;
        if finish == "stop"
            && let Some(e) = self.eos
        {
            ids.push(e);
        }
        Ok(ids)
    }

    /// The features of prompt + answer w.r.t. `loaded`'s adapter, projected as its index.
    pub fn features(
        &self,
        loaded: &Loaded,
        prompt: &[u32],
        answer: &[u32],
    ) -> Result<Vec<Vec<f32>>, AttrError> {
        let mut input_ids = prompt.to_vec();
        input_ids.extend_from_slice(answer);
        let mut labels = vec![IGNORE_INDEX; prompt.len()];
        labels.extend(answer.iter().map(|&t| i64::from(t)));
        let ex = TrainExample { input_ids, labels };
        // The same computation as `tributary_model::features::query_features`, with the
        // featurizer and projector built once per adapter.
        let g = loaded.featurizer.gradient(&ex).map_err(AttrError::model)?;
        Ok(vec![loaded.projector.project(&g).map_err(AttrError::math)?])
    }

    /// Attributes `job`: the record and the objects to store (features, then the record).
    /// `None` when its adapter has no index.
    #[allow(clippy::disallowed_methods)] // measures elapsed time
    pub fn attribute(
        &mut self,
        job: &AnswerJob,
    ) -> Result<Option<(AttributionRecord, Objects)>, AttrError> {
        let t0 = Instant::now();
        let Some(loaded) = self.load(&job.adapter)? else {
            return Ok(None);
        };
        let mut ctx = loaded.ctx.clone();
        ctx.withdrawn = self.withdrawn(&loaded)?;
        let pricing = self.pricing.for_adapter(&job.adapter);
        let prompt = self.prompt_tokens(&job.prompt)?;
        let mut objects = Vec::new();
        let mut choices = Vec::with_capacity(job.choices.len());
        for c in &job.choices {
            let answer = self.answer_tokens(&c.text, &c.finish)?;
            let billed = if c.finish == "cancelled" || c.completion_tokens == 0 {
                self.tokenizer
                    .encode(&c.text)
                    .map_err(AttrError::model)?
                    .len() as u64
            } else {
                c.completion_tokens
            };
            let (query, bits) = if answer.is_empty() {
                let bits = compute_bits(
                    &loaded.index,
                    &loaded.centered,
                    &ctx,
                    &[vec![0.0; loaded.index.dims()]],
                    &self.params,
                    &pricing,
                    billed,
                    job.answered_ms,
                )
                .map_err(AttrError::record)?;
                (vec![vec![0.0; loaded.index.dims()]], bits)
            } else {
                let q = self.features(&loaded, &prompt, &answer)?;
                let bits = compute_bits(
                    &loaded.index,
                    &loaded.centered,
                    &ctx,
                    &q,
                    &self.params,
                    &pricing,
                    billed,
                    job.answered_ms,
                )
                .map_err(AttrError::record)?;
                (q, bits)
            };
            let fbytes = features_to_bytes(&query);
            let fkey = features_key(&job.request_id, c.index);
            let ev = match &loaded.suffix {
                Some((sx, ids)) => {
                    let tok = &self.tokenizer;
                    let plain = self.tokenizer.encode(&c.text).map_err(AttrError::model)?;
                    let spans = sx.spans(&plain, self.params.verbatim_min_tokens, 5, |t| {
                        tok.decode(&[t], false)
                            .is_ok_and(|s| s.starts_with(char::is_whitespace))
                    });
                    evidence(&spans, ids, |start, len| {
                        plain
                            .get(start..start + len)
                            .and_then(|ts| tok.decode(ts, false).ok())
                            .unwrap_or_default()
                    })
                }
                None => Vec::new(),
            };
            choices.push(ChoiceRecord {
                index: c.index,
                prompt_tokens: prompt.len(),
                completion_tokens: billed,
                finish: c.finish.clone(),
                answer: c.text.clone(),
                features_key: fkey.clone(),
                features_blake3: blake3::hash(&fbytes).to_hex().to_string(),
                bits,
                evidence: ev,
            });
            objects.push((fkey, fbytes));
        }
        objects.push((
            format!("attribution/prompts/{}.json", job.request_id),
            serde_json::to_vec(&job.prompt).map_err(AttrError::io)?,
        ));
        let rec = AttributionRecord {
            format: FORMAT,
            request_id: job.request_id.clone(),
            answered_ms: job.answered_ms,
            adapter: job.adapter.clone(),
            base_model: self.base_digest.clone(),
            data: loaded.data.clone(),
            data_version: loaded.data_version.clone(),
            builder: loaded
                .entry
                .owner
                .clone()
                .unwrap_or_else(|| "anonymous".into()),
            requester: job.requester.clone(),
            method: self.params.score.method.name().to_string(),
            params: self.params,
            pricing,
            projection: loaded.index.header.projection,
            query_checkpoints: 1,
            choices,
            seconds: t0.elapsed().as_secs_f64(),
        };
        Ok(Some((rec, objects)))
    }

    /// Recomputes `rec`'s bits from its stored features (the rerun of a dispute).
    pub fn rerun_bits(
        &mut self,
        rec: &AttributionRecord,
        features: &[Vec<Vec<f32>>],
    ) -> Result<Vec<super::record::Bits>, AttrError> {
        let loaded = self.load(&rec.adapter)?.ok_or_else(|| {
            AttrError::Missing(format!("no attribution index for adapter {}", rec.adapter))
        })?;
        let mut ctx = loaded.ctx.clone();
        ctx.withdrawn = self.withdrawn(&loaded)?;
        rec.choices
            .iter()
            .zip(features)
            .map(|(c, q)| {
                compute_bits(
                    &loaded.index,
                    &loaded.centered,
                    &ctx,
                    q,
                    &rec.params,
                    &rec.pricing,
                    c.completion_tokens,
                    rec.answered_ms,
                )
                .map_err(AttrError::record)
            })
            .collect()
    }
}
