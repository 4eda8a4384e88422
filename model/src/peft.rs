//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors` with PEFT's key names; load, validate, save, merge.
