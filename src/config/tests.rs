//! Loading settings: defaults, overrides, and errors that name their key.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Environment {
    Environment {
        vars: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn docfetch_runs_with_no_config_file_at_all() {
    let s = Settings::from_toml("", &Environment::default()).unwrap();
    assert_eq!(s.store.url, "sqlite://var/docfetch.db");
    assert_eq!(s.paths.requests, PathBuf::from("var/requests"));
    assert_eq!(s.scheduler.workers, 32);
    assert_eq!(s.scheduler.poll_initial, Duration::from_secs(2));
    assert_eq!(s.scheduler.poll_max, Duration::from_secs(600));
    assert_eq!(s.scheduler.max_attempts, 8);
    assert_eq!(s.scheduler.deadline, Duration::from_secs(48 * 3600));
    assert_eq!(s.scheduler.max_file_size, 4 << 30);
    assert!(s.accounts.is_empty());
}

#[test]
fn environment_overrides_the_file() {
    let s = Settings::from_toml(
        "[scheduler]\nworkers = 4\n",
        &env(&[
            ("DOCFETCH__SCHEDULER__WORKERS", "7"),
            ("DOCFETCH__PATHS__OUTPUT", "/srv/out"),
            ("DOCFETCH_CONFIG", "/etc/docfetch.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(s.scheduler.workers, 7);
    assert_eq!(s.paths.output, PathBuf::from("/srv/out"));
}

#[test]
fn a_typo_is_an_error_that_names_the_key() {
    let err = Settings::from_toml("[scheduler]\nworkrs = 4\n", &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("workrs"), "{err}");
    let err = Settings::from_toml("[scheduler]\npoll_max = \"ten\"\n", &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("scheduler.poll_max"), "{err}");
}

#[test]
fn secrets_come_from_the_file_a_secret_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fresh"), "s3cret-from-file\n").unwrap();
    let base = "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/a/hs/dt/storage\"\nusername = \"api\"\n";
    let from_file = format!("{base}password_file = \"fresh\"\n");
    let s = Settings::from_toml(
        &from_file,
        &env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]),
    )
    .unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("s3cret"), "Debug leaks the secret: {debug}");
    let crate::providers::AccountConfig::Fresh(fresh) = &s.accounts["a"].config else {
        panic!("a 1c-fresh account")
    };
    assert_eq!(fresh.password.expose(), "s3cret-from-file");

    let from_env = format!("{base}password_env = \"FRESH_PW\"\n");
    let s = Settings::from_toml(&from_env, &env(&[("FRESH_PW", "pw-from-env")])).unwrap();
    let crate::providers::AccountConfig::Fresh(fresh) = &s.accounts["a"].config else {
        panic!("a 1c-fresh account")
    };
    assert_eq!(fresh.password.expose(), "pw-from-env");

    let err = Settings::from_toml(&from_env, &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("FRESH_PW"), "{err}");

    let both = format!("{base}password = \"x\"\npassword_env = \"FRESH_PW\"\n");
    assert!(Settings::from_toml(&both, &Environment::default()).is_err());
}

#[test]
fn unknown_provider_and_unknown_account_keys_are_rejected() {
    let err = Settings::from_toml(
        "[accounts.a]\nprovider = \"nope\"\n",
        &Environment::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("accounts.a.provider"), "{err}");
    let err = Settings::from_toml(
        "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\ncolour = \"red\"\n",
        &Environment::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("accounts.a.colour"), "{err}");
}

#[test]
fn the_api_listens_on_loopback_by_default_with_a_token_made_beside_the_store() {
    let s = Settings::from_toml("", &Environment::default()).unwrap();
    assert_eq!(
        s.api.listen,
        ApiListen::Tcp("127.0.0.1:8750".parse().unwrap())
    );
    assert_eq!(s.api.auth, ApiAuth::Generated("var/api-token".into()));
    assert!(!s.api.metrics_public);
    assert_eq!(s.api.header_timeout, Duration::from_secs(10));
    let s = Settings::from_toml(
        "[store]\nurl = \"sqlite:///srv/docfetch/jobs.db?mode=rwc\"\n",
        &Environment::default(),
    )
    .unwrap();
    assert_eq!(
        s.api.auth,
        ApiAuth::Generated("/srv/docfetch/api-token".into())
    );
    let s = Settings::from_toml(
        "[store]\nurl = \"postgres://u:pw@db/docfetch\"\n",
        &Environment::default(),
    )
    .unwrap();
    assert_eq!(s.api.auth, ApiAuth::Generated("var/api-token".into()));
    let s = Settings::from_toml("[api]\nlisten = \"\"\n", &Environment::default()).unwrap();
    assert_eq!(s.api.listen, ApiListen::Disabled);
    let s = Settings::from_toml(
        "[api]\nlisten = \"0.0.0.0:8750\"\n",
        &Environment::default(),
    )
    .unwrap();
    assert!(
        matches!(s.api.auth, ApiAuth::Generated(_)),
        "the network gets the token too"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token"), "0123456789abcdef0123\n").unwrap();
    let text = format!(
        "[api]\nlisten = \"0.0.0.0:8750\"\ntoken_file = \"{}\"\n",
        dir.path().join("api-token").display()
    );
    let s = Settings::from_toml(&text, &Environment::default()).unwrap();
    let ApiAuth::Token { token, .. } = s.api.auth else {
        panic!("the configured token is used")
    };
    assert_eq!(token.expose(), "0123456789abcdef0123");
    assert!(
        Settings::from_toml("[api]\nlisten = \"nonsense\"\n", &Environment::default()).is_err()
    );
    let s = Settings::from_toml(
        "",
        &env(&[(
            "DOCFETCH__API__ALLOWED_HOSTS",
            "docfetch.internal, Proxy.example:443",
        )]),
    )
    .unwrap();
    assert_eq!(
        s.api.allowed_hosts,
        ["docfetch.internal", "proxy.example:443"]
    );
    let err = Settings::from_toml(
        "[api]\nallowed_hosts = [\"evil.example/\"]\n",
        &Environment::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("api.allowed_hosts"), "{err}");
}

#[test]
fn no_credential_is_allowed_only_on_a_unix_socket() {
    let s = Settings::from_toml(
        "[api]\nlisten = \"/run/docfetch/api.sock\"\nauth = \"none\"\n",
        &Environment::default(),
    )
    .unwrap();
    assert_eq!(
        s.api.listen,
        ApiListen::Unix("/run/docfetch/api.sock".into())
    );
    assert_eq!(s.api.auth, ApiAuth::None);
    for listen in ["127.0.0.1:8750", "0.0.0.0:8750"] {
        let err = Settings::from_toml(
            &format!("[api]\nlisten = \"{listen}\"\nauth = \"none\"\n"),
            &Environment::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("api.auth") && err.contains("unix socket"),
            "{err}"
        );
    }
    let err = Settings::from_toml("[api]\nauth = \"basic\"\n", &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("api.auth"), "{err}");
    let err = Settings::from_toml("[api]\nheader_timeout = \"0s\"\n", &Environment::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("api.header_timeout"), "{err}");
}

#[test]
fn named_hooks_are_read_and_checked_with_their_keys_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("whsec"), "whsec-0123456789\n").unwrap();
    let text = format!(
        "[hooks]\ntimeout = \"30s\"\n[hooks.import-usn]\ncommand = [\"/usr/local/bin/import-usn\", \"--quiet\"]\ntimeout = \"2m\"\n[hooks.notify]\nurl = \"https://intranet.example/hook\"\nsecret_file = \"{}\"\n",
        dir.path().join("whsec").display()
    );
    let s = Settings::from_toml(&text, &Environment::default()).unwrap();
    assert_eq!(s.hooks.timeout, Duration::from_secs(30));
    assert!(!s.hooks.allow_request_commands);
    let import = &s.hooks.named["import-usn"];
    assert_eq!(
        import.command.as_deref(),
        Some(&["/usr/local/bin/import-usn".to_string(), "--quiet".into()][..])
    );
    assert_eq!(import.timeout, Some(Duration::from_secs(120)));
    let notify = &s.hooks.named["notify"];
    assert_eq!(notify.secret.as_ref().unwrap().expose(), "whsec-0123456789");
    assert!(!format!("{s:?}").contains("whsec-0123456789"));

    let cases = [
        (
            "[hooks.plain]\nurl = \"http://intranet.example/hook\"\nsecret = \"0123456789abcdef\"\n",
            "hooks.plain.url",
            "https://",
        ),
        (
            "[hooks.unsigned]\nurl = \"https://intranet.example/hook\"\n",
            "hooks.unsigned.secret",
            "needs a secret",
        ),
        ("[hooks.empty]\n", "hooks.empty", "give `command`"),
        (
            "[hooks.typo]\ncommand = [\"/bin/true\"]\ncomand = 1\n",
            "hooks.typo.comand",
            "unknown key",
        ),
        (
            "[hooks]\nallow_request_command = true\n",
            "hooks.allow_request_command",
            "unknown key",
        ),
        (
            "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done = \"missing\"\n",
            "accounts.a.on_done",
            "no hook named \"missing\"",
        ),
        (
            "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done_url = \"http://10.0.0.5/hook\"\n",
            "accounts.a.on_done_url",
            "plain http://",
        ),
    ];
    for (text, key, why) in cases {
        let err = Settings::from_toml(text, &Environment::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(why), "{text}: {err}");
    }
    // Loopback receivers may use plain http; accounts may name hooks.
    let s = Settings::from_toml(
        "[hooks.local]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"0123456789abcdef\"\n[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"https://h/x\"\nusername = \"u\"\npassword = \"p\"\non_done = \"local\"\non_failed = [\"/usr/local/bin/alert\"]\non_done_url = \"http://localhost:9000/x\"\n",
        &Environment::default(),
    )
    .unwrap();
    assert_eq!(
        s.accounts["a"].hooks.on_done,
        Some(crate::job::HookRef::Named("local".into()))
    );
    let s = Settings::from_toml(
        "[hooks]\nallow_request_commands = true\n",
        &env(&[("DOCFETCH__HOOKS__MAX_ATTEMPTS", "3")]),
    )
    .unwrap();
    assert!(s.hooks.allow_request_commands);
    assert_eq!(s.hooks.max_attempts, 3);
}

#[test]
fn the_example_config_is_valid_and_shows_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("fresh");
    std::fs::write(&secret, "pw\n").unwrap();
    let text = include_str!("../../config/docfetch.example.toml")
        .replace("/run/credentials/docfetch/fresh", secret.to_str().unwrap());
    let example = Settings::from_toml(&text, &Environment::default()).unwrap();
    let defaults = Settings::from_toml("", &Environment::default()).unwrap();
    assert_eq!(
        format!("{:?}", example.scheduler),
        format!("{:?}", defaults.scheduler)
    );
    assert_eq!(
        format!("{:?}", example.inbox),
        format!("{:?}", defaults.inbox)
    );
    assert_eq!(
        format!("{:?}", example.paths),
        format!("{:?}", defaults.paths)
    );
    assert_eq!(format!("{:?}", example.api), format!("{:?}", defaults.api));
    assert_eq!(
        format!("{:?}", example.hooks),
        format!("{:?}", defaults.hooks)
    );
    assert_eq!(example.store.url, defaults.store.url);
    assert_eq!(example.accounts.len(), 1);
}

/// One account of every provider, with `{base}` and `{identity}` as its
/// URLs and `{extra}` added.
fn every_provider(base: &str, identity: &str, extra: &str) -> Vec<(&'static str, String)> {
    let fill = |text: &str| {
        text.replace("{base}", base)
            .replace("{identity}", identity)
            .replace("{extra}", extra)
    };
    vec![
        (
            "base_url",
            fill(
                "[accounts.a]\nprovider = \"1c-fresh\"\nbase_url = \"{base}/a/hs/dt/storage\"\nusername = \"u\"\npassword = \"p\"\n{extra}",
            ),
        ),
        (
            "base_url",
            fill(
                "[accounts.a]\nprovider = \"ofd-ru\"\nbase_url = \"{base}\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
            ),
        ),
        (
            "base_url",
            fill(
                "[accounts.a]\nprovider = \"atol-kkt\"\nbase_url = \"{base}\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
            ),
        ),
        (
            "base_url",
            fill(
                "[accounts.a]\nprovider = \"kontur-extern\"\nbase_url = \"{base}\"\nidentity_url = \"https://identity.kontur.ru\"\naccount_id = \"1d0e5c2a-0000-0000-0000-000000000000\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
            ),
        ),
        (
            "identity_url",
            fill(
                "[accounts.a]\nprovider = \"kontur-extern\"\nbase_url = \"https://extern-api.kontur.ru\"\nidentity_url = \"{identity}\"\naccount_id = \"1d0e5c2a-0000-0000-0000-000000000000\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
            ),
        ),
        (
            "base_url",
            fill(
                "[accounts.a]\nprovider = \"kontur-diadoc\"\nbase_url = \"{base}\"\nauth = \"diadoc\"\nclient_id = \"c\"\nlogin = \"l\"\npassword = \"p\"\n{extra}",
            ),
        ),
        (
            "identity_url",
            fill(
                "[accounts.a]\nprovider = \"kontur-diadoc\"\nbase_url = \"https://diadoc-api.kontur.ru\"\nauth = \"oidc\"\nidentity_url = \"{identity}\"\nclient_id = \"c\"\napi_key = \"k\"\n{extra}",
            ),
        ),
    ]
}

#[test]
fn plain_http_to_another_machine_is_refused_for_every_provider_naming_the_key() {
    for (key, toml) in every_provider("http://api.example", "http://id.example", "") {
        let err = Settings::from_toml(&toml, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("accounts.a.{key}")) && err.contains("allow_plain_http"),
            "{toml}\n{err}"
        );
    }
}

#[test]
fn plain_http_is_fine_on_loopback_or_when_the_account_allows_it() {
    for base in [
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
        "http://localhost:8080",
    ] {
        for (_, toml) in every_provider(base, &format!("{base}/id"), "") {
            Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
        }
    }
    for (_, toml) in every_provider(
        "http://api.example",
        "http://id.example",
        "allow_plain_http = true\n",
    ) {
        Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
    }
    // Said on an https account, it is no typo; a wrong value names the key.
    for (_, toml) in every_provider(
        "https://api.example",
        "https://id.example",
        "allow_plain_http = false\n",
    ) {
        Settings::from_toml(&toml, &env(&[])).unwrap_or_else(|e| panic!("{toml}\n{e}"));
    }
    let (_, bad) = every_provider("https://h", "https://i", "allow_plain_http = 3\n").remove(0);
    let err = Settings::from_toml(&bad, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("accounts.a.allow_plain_http"), "{err}");
}

#[test]
fn a_postgres_store_beyond_loopback_without_certificate_checks_is_warned_about_without_its_password()
 {
    let warned = store_transport_warning("postgres://docfetch:s3cret@db.internal:5432/docfetch")
        .expect("a warning");
    assert!(
        warned.contains("sslmode=prefer") && warned.contains("verify-full"),
        "{warned}"
    );
    assert!(!warned.contains("s3cret"), "{warned}");
    assert!(
        store_transport_warning("postgres://u@db.internal/d?sslmode=require")
            .is_some_and(|w| w.contains("sslmode=require"))
    );
    for quiet in [
        "sqlite://var/docfetch.db",
        "postgres://u@db.internal/d?sslmode=verify-full",
        "postgresql://u@db.internal/d?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
        "postgres://postgres@127.0.0.1:5432/test",
        "postgres://u@localhost/d",
        "postgres://u@[::1]/d",
        "postgres:///d?host=/run/postgresql",
    ] {
        assert_eq!(store_transport_warning(quiet), None, "{quiet}");
    }
    assert!(store_transport_warning("postgres://u@localhost/d?host=db.internal").is_some());
}
