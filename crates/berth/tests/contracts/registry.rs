//! The `Registry` contract: one suite, run against `OciRegistry` on the
//! real local registry (`BERTH_TEST_REGISTRY`, with the test image
//! `BERTH_TEST_IMAGE` tags v1 and v2; fails without them) and against
//! `FakeRegistry`.
//!
//! Each case in `cases` is an async fn taking a [`Ctx`]; the `contract!`
//! macro turns it into `real::<case>` and `fake::<case>` tests. On the real
//! registry every case pushes into repositories of its own (`docker tag` +
//! `docker push` of the test image), so cases never see each other's tags.

use std::process::Command;
use std::sync::Arc;

use berth::adapters::registry::{OciRegistry, RegistryConfig};
use berth::fakes::FakeRegistry;
use berth::ports::registry::{Registry, RegistryError};
use berth::ports::SystemClock;
use berth_core::image::{digest_from_repo_digests, Digest, Repository};
use futures_util::FutureExt;
use sha2::{Digest as _, Sha256};

// --- harness ----------------------------------------------------------------

/// Which of the test image's tags to push.
#[derive(Clone, Copy, Debug)]
enum Source {
    V1,
    V2,
}

impl Source {
    fn tag(self) -> &'static str {
        match self {
            Source::V1 => "v1",
            Source::V2 => "v2",
        }
    }
}

enum Backend {
    Real {
        registry: String,
        image: String,
        /// `repo:tag` and `repo@digest` names made locally, removed at the end.
        local_names: std::sync::Mutex<Vec<String>>,
    },
    Fake(Arc<FakeRegistry>),
}

/// What a case gets: the registry under test, and a way to push to it.
struct Ctx {
    registry: Arc<dyn Registry>,
    backend: Backend,
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn sha256_digest(bytes: &[u8]) -> Digest {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Digest::parse(&format!("sha256:{hex}")).unwrap()
}

fn docker(args: &[&str]) -> Vec<u8> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Ctx {
    /// A repository no other case uses, with nothing in it yet.
    fn fresh_repo(&self) -> Repository {
        let host = match &self.backend {
            Backend::Real { registry, .. } => registry.as_str(),
            Backend::Fake(_) => "registry.example",
        };
        Repository::parse(&format!("{host}/berth-contract/r{}", unique())).unwrap()
    }

    /// Pushes the test image's `source` tag as `repo:tag` (moving the tag
    /// if it exists) and returns the manifest digest the registry has.
    async fn push(&self, repo: &Repository, tag: &str, source: Source) -> Digest {
        match &self.backend {
            Backend::Fake(fake) => {
                let digest = sha256_digest(source.tag().as_bytes());
                fake.set_tag(repo, tag, &digest);
                digest
            }
            Backend::Real {
                image, local_names, ..
            } => {
                let from = format!("{image}:{}", source.tag());
                let to = format!("{}:{tag}", repo.as_str());
                local_names.lock().unwrap().push(to.clone());
                let name = repo.clone();
                let digest = tokio::task::spawn_blocking(move || {
                    docker(&["tag", &from, &to]);
                    docker(&["push", "--quiet", &to]);
                    // The digest Docker recorded for this repository on push.
                    let out = docker(&["inspect", "--format", "{{json .RepoDigests}}", &to]);
                    let digests: Vec<String> = serde_json::from_slice(&out).unwrap();
                    digest_from_repo_digests(&name, digests.iter().map(String::as_str))
                        .unwrap_or_else(|| panic!("{to} has no RepoDigests: {digests:?}"))
                })
                .await
                .unwrap();
                // Docker keeps a `repo@digest` name even once the tag moved on.
                local_names
                    .lock()
                    .unwrap()
                    .push(format!("{}@{digest}", repo.as_str()));
                digest
            }
        }
    }
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run `eval \"$(bash scripts/test-env.sh --env-only)\"` first \
             (it starts the local registry and pushes the test images)"
        )
    })
}

async fn run_real<F, Fut>(case: F)
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ctx = Arc::new(Ctx {
        registry: Arc::new(
            OciRegistry::new(RegistryConfig::default(), Arc::new(SystemClock)).unwrap(),
        ),
        backend: Backend::Real {
            registry: required_env("BERTH_TEST_REGISTRY"),
            image: required_env("BERTH_TEST_IMAGE"),
            local_names: Default::default(),
        },
    });
    let result = std::panic::AssertUnwindSafe(case(ctx.clone()))
        .catch_unwind()
        .await;
    // Only the local names: the images stay under their test-image tags.
    if let Backend::Real { local_names, .. } = &ctx.backend {
        let names = local_names.lock().unwrap_or_else(|p| p.into_inner());
        for name in names.iter() {
            let _ = Command::new("docker").args(["rmi", name]).output();
        }
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn run_fake<F, Fut>(case: F)
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let fake = Arc::new(FakeRegistry::new());
    case(Arc::new(Ctx {
        registry: fake.clone(),
        backend: Backend::Fake(fake),
    }))
    .await
}

macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod real {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::run_real(super::cases::$case).await
                }
            )+
        }
        mod fake {
            $(
                #[tokio::test]
                async fn $case() {
                    super::run_fake(super::cases::$case).await
                }
            )+
        }
    };
}

contract!(
    resolve_tag_returns_the_pushed_digest,
    a_moved_tag_resolves_to_its_new_digest,
    missing_tag_is_not_found,
    missing_repository_is_not_found,
    has_digest_is_true_only_for_manifests_in_the_repository,
    an_invalid_tag_is_rejected,
);

// --- the cases --------------------------------------------------------------

mod cases {
    use super::*;

    pub async fn resolve_tag_returns_the_pushed_digest(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        let v1 = ctx.push(&repo, "stable", Source::V1).await;
        let v2 = ctx.push(&repo, "next", Source::V2).await;
        assert_ne!(v1, v2);
        assert_eq!(ctx.registry.resolve_tag(&repo, "stable").await, Ok(v1));
        assert_eq!(ctx.registry.resolve_tag(&repo, "next").await, Ok(v2));
    }

    pub async fn a_moved_tag_resolves_to_its_new_digest(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        let before = ctx.push(&repo, "latest", Source::V1).await;
        assert_eq!(
            ctx.registry.resolve_tag(&repo, "latest").await,
            Ok(before.clone())
        );
        let after = ctx.push(&repo, "latest", Source::V2).await;
        assert_ne!(before, after);
        assert_eq!(ctx.registry.resolve_tag(&repo, "latest").await, Ok(after));
        // The manifest the tag left is still there, by digest.
        assert_eq!(ctx.registry.has_digest(&repo, &before).await, Ok(true));
    }

    pub async fn missing_tag_is_not_found(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        ctx.push(&repo, "v1", Source::V1).await;
        let err = ctx.registry.resolve_tag(&repo, "no-such-tag").await;
        assert!(matches!(err, Err(RegistryError::NotFound(_))), "{err:?}");
    }

    pub async fn missing_repository_is_not_found(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        let err = ctx.registry.resolve_tag(&repo, "v1").await;
        assert!(matches!(err, Err(RegistryError::NotFound(_))), "{err:?}");
        let any = sha256_digest(b"berth: a manifest nobody pushed");
        assert_eq!(ctx.registry.has_digest(&repo, &any).await, Ok(false));
    }

    pub async fn has_digest_is_true_only_for_manifests_in_the_repository(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        let other = ctx.fresh_repo();
        let v1 = ctx.push(&repo, "v1", Source::V1).await;
        let v2 = ctx.push(&other, "v2", Source::V2).await;
        assert_eq!(ctx.registry.has_digest(&repo, &v1).await, Ok(true));
        assert_eq!(ctx.registry.has_digest(&other, &v2).await, Ok(true));
        // A manifest of another repository is not in this one.
        assert_eq!(ctx.registry.has_digest(&repo, &v2).await, Ok(false));
        let absent = sha256_digest(b"berth: a manifest nobody pushed");
        assert_eq!(ctx.registry.has_digest(&repo, &absent).await, Ok(false));
    }

    pub async fn an_invalid_tag_is_rejected(ctx: Arc<Ctx>) {
        let repo = ctx.fresh_repo();
        ctx.push(&repo, "v1", Source::V1).await;
        for tag in ["../v1", "", "v1/manifests", ".hidden"] {
            let err = ctx.registry.resolve_tag(&repo, tag).await;
            assert!(
                matches!(err, Err(RegistryError::Rejected(_))),
                "{tag:?}: {err:?}"
            );
        }
    }
}
