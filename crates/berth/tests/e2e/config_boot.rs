//! `[[templates]]` in berth.toml are upserted at boot; a seeded pin never
//! overwrites a pin that was promoted later.

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn config_templates_and_seed_pins() {
    let image = test_image();
    let v1 = registry_digest(&image, "v1").await;
    let v2 = registry_digest(&image, "v2").await;
    let toml = format!(
        "[[templates]]\nname = \"engine\"\nimage = \"{image}\"\ntag = \"v1\"\nport = 8080\nrequire_pin = true\npin = \"{v1}\"\n"
    );
    let t = TestServer::start_with(Options {
        toml: toml.clone(),
        ..Default::default()
    })
    .await;
    let (status, tpl) = t.get("/v1/templates/engine").await;
    assert_eq!(status, StatusCode::OK, "{tpl}");
    assert_eq!(tpl["require_pin"], true);
    let (_, pin) = t.get("/v1/templates/engine/pin").await;
    assert_eq!(pin["digest"], v1.as_str());
    assert_eq!(pin["promoted_by"], "config");
    // A pinned, require_pin template from the file runs its seed.
    let (status, rt) = t.start_runtime("cfg-1", "engine").await;
    assert_eq!(status, StatusCode::CREATED, "{rt}");
    assert_eq!(rt["image_digest"], v1.as_str());

    // An operator promotes v2; a reboot with the same file keeps v2.
    let (status, _) = t
        .post("/v1/templates/engine/pin", json!({"digest": v2}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (data_dir, owner) = t.stop_keeping_data().await;
    let t = TestServer::start_with(Options {
        toml,
        data_dir: Some(data_dir),
        owner: Some(owner),
        ..Default::default()
    })
    .await;
    let (_, pin) = t.get("/v1/templates/engine/pin").await;
    assert_eq!(
        pin["digest"],
        v2.as_str(),
        "the seed did not overwrite the promote"
    );
    let (_, history) = t.get("/v1/templates/engine/pin/history").await;
    assert_eq!(history["pins"].as_array().unwrap().len(), 2);
    // The runtime survived the restart untouched.
    let (_, rt) = t.get("/v1/runtimes/cfg-1").await;
    assert_eq!(rt["status"], "running");
    assert_eq!(rt["image_digest"], v1.as_str());
    t.shutdown().await;
}
