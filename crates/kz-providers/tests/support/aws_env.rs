//! The process environment the AWS SDK reads (it ignores kz's `getenv`), shared by the AWS
//! provider tests and the conformance suite: credentials from a private shared-credentials file
//! (`test`/`test`, which moto accepts; plus a `kz-nocreds` profile with none), no instance
//! metadata, and no outer `AWS_*` variable that could change the outcome.

use std::sync::Once;

/// Sets it once; every test of the binary calls this first.
pub fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let config = dir.join("config");
        let credentials = dir.join("credentials");
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n\n[profile kz-nocreds]\nregion = us-east-1\n",
        )
        .unwrap();
        std::fs::write(
            &credentials,
            "[default]\naws_access_key_id = test\naws_secret_access_key = test\n",
        )
        .unwrap();
        let remove = [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SSM",
            "AWS_ENDPOINT_URL_STS",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        ];
        // SAFETY: every test of this binary calls `aws_env()` first, and `Once` blocks them all
        // until this closure returns, so no other thread of the process is running code that
        // reads the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            for k in remove {
                std::env::remove_var(k);
            }
            std::env::set_var("AWS_CONFIG_FILE", &config);
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        }
    });
}
