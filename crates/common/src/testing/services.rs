//! The platform's services started in the test's process, as `shop` composes them: one
//! set of variables, the dependencies they name shared, each service on its own port.

use axum::Router;
use sqlx::PgPool;

use super::{TestDb, TestServer, base_vars, with_overrides};
use crate::config::{CommonConfig, Env};
use crate::http::Shared;
use crate::service::Spec;

impl TestDb {
    /// A fresh database and the variables to run services on it: [`base_vars`], with
    /// `overrides` replacing or adding entries.
    pub async fn with_vars(overrides: &[(&str, &str)]) -> (Self, Vec<(String, String)>) {
        let db = Self::create().await;
        let vars = with_overrides(base_vars(&db), overrides);
        (db, vars)
    }
}

/// Services of one test that share their dependencies (Redis, the token authenticator,
/// the event backbone), as the services of one `shop` process do.
pub struct TestServices {
    pub vars: Vec<(String, String)>,
    pub shared: Shared,
}

/// One service started by [`TestServices::serve`].
pub struct Served {
    pub server: TestServer,
    /// The service's own pool (its schema, its role).
    pub db: PgPool,
    /// What the server serves, to serve it again after a shutdown.
    pub app: Router,
}

impl TestServices {
    /// Connects the dependencies `vars` name. The process has no address of its own (port
    /// 0), so the services call each other over HTTP, as deployed.
    pub async fn connect(vars: Vec<(String, String)>) -> Self {
        let common = CommonConfig::from_env(&Env::from_pairs(vars.clone()), 0).expect("a valid test configuration");
        let shared = Shared::connect(&common).await.expect("the shared dependencies");
        Self { vars, shared }
    }

    /// Starts `S` (migrated, with its workers) from the variables and `more` on top, and
    /// serves it on a free port.
    pub async fn serve<S: Spec>(&self, more: &[(&str, &str)]) -> Served {
        let vars = with_overrides(self.vars.clone(), more);
        let config = S::from_env(&Env::from_pairs(vars)).expect("a valid service configuration");
        let service = config.start(&self.shared).await.expect("the service starts");
        let db = service.db.clone();
        let app = crate::http::app(vec![service], self.shared.clone());
        Served { server: TestServer::spawn(app.clone()).await, db, app }
    }
}
