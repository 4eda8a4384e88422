//! Unit tests for [`super`]: URL parsing, model download and reuse, datanet export.

use super::*;

#[test]
fn data_values_parse_into_sources() {
    assert_eq!(
        parse_data("datanet://demo@latest").unwrap(),
        DataSource::Datanet {
            name: "demo".into(),
            version: None
        }
    );
    assert_eq!(
        parse_data("datanet://demo@3").unwrap(),
        DataSource::Datanet {
            name: "demo".into(),
            version: Some("3".into())
        }
    );
    assert_eq!(
        parse_data("s3://b/dir/train.jsonl?endpoint=http://127.0.0.1:9").unwrap(),
        DataSource::Object {
            store: "s3://b/dir?endpoint=http://127.0.0.1:9".into(),
            key: "train.jsonl".into()
        }
    );
    assert_eq!(
        parse_data("/tmp/x.jsonl").unwrap(),
        DataSource::Path("/tmp/x.jsonl".into())
    );
    for bad in [
        "datanet://Bad Name@1",
        "datanet://demo@",
        "ftp://x/y",
        "file:///dir/",
    ] {
        let e = parse_data(bad).unwrap_err().to_string();
        assert!(e.contains("data") && e.contains(bad), "{bad}: {e}");
    }
}

fn write_model(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), b"{\"model_type\":\"llama\"}").unwrap();
    std::fs::write(dir.join("model.safetensors"), vec![7u8; 1000]).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
}

#[test]
fn a_model_url_is_downloaded_once_and_digests_like_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("remote");
    write_model(&src);
    let cfg = SourceConfig {
        store: None,
        cache_dir: tmp.path().join("cache"),
    };
    let url = format!("file://{}", src.display());
    let dir = cfg.model_dir(&url).unwrap();
    assert!(dir.starts_with(&cfg.cache_dir), "{dir:?}");
    assert_eq!(
        crate::trainer_exec::digest_dir(&dir).unwrap(),
        crate::trainer_exec::digest_dir(&src).unwrap()
    );
    // A second resolve reuses the copy: a marker written there survives.
    std::fs::write(dir.join("marker"), b"x").unwrap();
    assert_eq!(cfg.model_dir(&url).unwrap(), dir);
    assert!(dir.join("marker").is_file());
    // No partial download directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(cfg.cache_dir.join("models"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
    // A changed remote file gets a fresh copy.
    std::fs::write(src.join("model.safetensors"), vec![8u8; 1001]).unwrap();
    let again = cfg.model_dir(&url).unwrap();
    assert_ne!(again, dir);
    assert_eq!(
        crate::trainer_exec::digest_dir(&again).unwrap(),
        crate::trainer_exec::digest_dir(&src).unwrap()
    );
}

#[test]
fn a_model_url_without_config_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("empty");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("model.safetensors"), b"x").unwrap();
    let cfg = SourceConfig {
        store: None,
        cache_dir: tmp.path().join("cache"),
    };
    let url = format!("file://{}", src.display());
    let e = cfg.model_dir(&url).unwrap_err().to_string();
    assert!(
        e.contains("base_model") && e.contains(&url) && e.contains("no config.json"),
        "{e}"
    );
    let e = cfg.model_dir("gs://bucket/m").unwrap_err().to_string();
    assert!(
        e.contains("base_model") && e.contains("unknown scheme"),
        "{e}"
    );
}

#[test]
fn datanet_versions_export_to_the_cache_under_their_manifest_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store_url = format!("file://{}", tmp.path().join("store").display());
    let nets = Datanets::new(Store::open(&store_url).unwrap());
    let rows = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"hello there\"}]}\n\
                {\"messages\":[{\"role\":\"user\",\"content\":\"two\"},{\"role\":\"assistant\",\"content\":\"second answer\"}]}\n";
    let head = block_on(async {
        nets.create("demo", "d").await.unwrap();
        nets.upload(
            "demo",
            rows.as_bytes(),
            &tributary_ledger::datanet::Uploader::Operator(Some("alice".into())),
            None,
        )
        .await
        .unwrap();
        nets.head("demo").await.unwrap().unwrap()
    })
    .unwrap();
    let cfg = SourceConfig {
        store: Some(store_url.clone()),
        cache_dir: tmp.path().join("cache"),
    };
    let got = cfg.data_file("datanet://demo@latest").unwrap();
    assert_eq!(got.digest.to_hex(), head.1);
    assert_eq!(cfg.data_file("datanet://demo@1").unwrap(), got);
    let text = std::fs::read_to_string(&got.path).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.contains("hello there"));
    // A takedown erases the text from the cached export of that version too.
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let id = first["id"].as_str().unwrap().to_string();
    block_on(nets.takedown(
        "demo",
        &tributary_ledger::datanet::Actor::Admin,
        &tributary_ledger::datanet::Scope::Examples(vec![id]),
        "erasure request",
    ))
    .unwrap()
    .unwrap();
    let again = cfg
        .data_file(&format!("datanet://demo@{}", head.1))
        .unwrap();
    assert_eq!(again.path, got.path);
    let text = std::fs::read_to_string(&again.path).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(!text.contains("hello there"));

    let e = cfg
        .data_file("datanet://nope@latest")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data") && e.contains("nope") && e.contains("does not exist"),
        "{e}"
    );
    let e = cfg.data_file("datanet://demo@9").unwrap_err().to_string();
    assert!(
        e.contains("data") && e.contains("version 9 is out of range"),
        "{e}"
    );
    let no_store = SourceConfig {
        store: None,
        ..cfg.clone()
    };
    let e = no_store
        .data_file("datanet://demo@latest")
        .unwrap_err()
        .to_string();
    assert!(e.contains("--store"), "{e}");
}

#[test]
fn a_jsonl_url_is_fetched_and_digested_like_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("remote");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("train.jsonl"),
        b"{\"prompt\":\"a\",\"completion\":\"b\"}\n",
    )
    .unwrap();
    let cfg = SourceConfig {
        store: None,
        cache_dir: tmp.path().join("cache"),
    };
    let local = cfg
        .data_file(&dir.join("train.jsonl").display().to_string())
        .unwrap();
    let remote = cfg
        .data_file(&format!("file://{}/train.jsonl", dir.display()))
        .unwrap();
    assert_eq!(local.digest, remote.digest);
    assert!(remote.path.starts_with(&cfg.cache_dir));
    assert_eq!(
        std::fs::read(&remote.path).unwrap(),
        std::fs::read(&local.path).unwrap()
    );
    let e = cfg
        .data_file(&format!("file://{}/missing.jsonl", dir.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data") && e.contains("missing.jsonl"), "{e}");
}

#[test]
fn a_model_on_s3_moto_is_downloaded_and_digests_like_its_path() {
    use tributary_ledger::testkit::{MotoServer, init_crypto};
    init_crypto();
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    moto.create_bucket("models").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("local");
    write_model(&src);
    let url = moto.url("models", "tiny");
    let store = Store::open(&url).unwrap();
    block_on(async {
        for f in crate::executor::read_dir_files(&src).unwrap() {
            let key = object_store::path::Path::from(f.name.as_str());
            store.put(&key, f.bytes.into()).await.unwrap();
        }
    })
    .unwrap();
    let cfg = SourceConfig {
        store: None,
        cache_dir: tmp.path().join("cache"),
    };
    let dir = cfg.model_dir(&url).unwrap();
    assert!(dir.starts_with(&cfg.cache_dir), "{dir:?}");
    assert_eq!(
        crate::trainer_exec::digest_dir(&dir).unwrap(),
        crate::trainer_exec::digest_dir(&src).unwrap()
    );
    // An empty prefix in the same bucket has no config.json.
    let empty = moto.url("models", "nothing-here");
    let e = cfg.model_dir(&empty).unwrap_err().to_string();
    assert!(
        e.contains("base_model") && e.contains("no config.json"),
        "{e}"
    );
}
