//! The shell hook. `kz hook --shell S` prints a script that, on every prompt, runs
//! `kz __hook-env --shell S --state "$_kz_state"`. That call walks up from the working directory,
//! hashes the config files, the trust record and the environment-selecting variables, and
//! compares the result with the state the shell passed: when nothing changed it prints nothing
//! (no config parse, no provider call). Otherwise it prints shell code that unloads exactly the
//! variables it loaded before (restoring any values they shadowed) and loads the new project's
//! secrets.
//!
//! The names loaded and the shadowed values live in unexported shell variables (`_kz_loaded`,
//! `_kz_saved_NAME`, `_kz_set_NAME`); the state passed in argv is only a hash.

use kz_config::discover::{find_up, hex};
use sha2::{Digest, Sha256};

use crate::cli::{HookEnvArgs, HookShell};
use crate::commands::{collect, print_out};
use crate::context::Ctx;
use crate::quote;
use crate::report::{CmdResult, exit};

const BASH: &str = r#"# keyzero shell integration (bash): eval "$(kz hook --shell bash)"
_kz_hook() {
  local _kz_status=$? _kz_out
  _kz_out="$(@KZ@ __hook-env --shell bash@FLAGS@ --state "${_kz_state-}")" && eval "$_kz_out"
  return $_kz_status
}
_kz_unload() {
  local _kz_n
  for _kz_n in ${_kz_loaded-}; do
    if eval "[ -n \"\${_kz_set_${_kz_n}+x}\" ]"; then
      eval "export ${_kz_n}=\"\${_kz_saved_${_kz_n}}\""
      unset "_kz_saved_${_kz_n}" "_kz_set_${_kz_n}"
    else
      unset "${_kz_n}"
    fi
  done
  _kz_loaded=
}
if [[ ";${PROMPT_COMMAND-};" != *";_kz_hook;"* ]]; then
  PROMPT_COMMAND="_kz_hook${PROMPT_COMMAND:+;${PROMPT_COMMAND}}"
fi
"#;

const ZSH: &str = r#"# keyzero shell integration (zsh): eval "$(kz hook --shell zsh)"
_kz_hook() {
  local _kz_out
  _kz_out="$(@KZ@ __hook-env --shell zsh@FLAGS@ --state "${_kz_state-}")" && eval "$_kz_out"
}
_kz_unload() {
  local _kz_n
  for _kz_n in ${=_kz_loaded-}; do
    if eval "[ -n \"\${_kz_set_${_kz_n}+x}\" ]"; then
      eval "export ${_kz_n}=\"\${_kz_saved_${_kz_n}}\""
      unset "_kz_saved_${_kz_n}" "_kz_set_${_kz_n}"
    else
      unset "${_kz_n}"
    fi
  done
  _kz_loaded=
}
autoload -Uz add-zsh-hook
add-zsh-hook precmd _kz_hook
add-zsh-hook chpwd _kz_hook
"#;

const FISH: &str = r#"# keyzero shell integration (fish): kz hook --shell fish | source
function _kz_unload
    for _kz_n in $_kz_loaded
        if set -q _kz_set_$_kz_n
            set -l _kz_v _kz_saved_$_kz_n
            set -gx $_kz_n $$_kz_v
            set -e _kz_saved_$_kz_n
            set -e _kz_set_$_kz_n
        else
            set -e $_kz_n
        end
    end
    set -g _kz_loaded
end
function _kz_hook --on-variable PWD --on-event fish_prompt
    @KZ@ __hook-env --shell fish@FLAGS@ --state "$_kz_state" | source
end
"#;

/// Prints the integration script. It calls this kz by its absolute path (as direnv does), so
/// it works when `kz` is not on the shell's `PATH`; with `-v` the per-prompt call is verbose
/// too and says which variables it loaded.
pub fn print_script(shell: HookShell, verbose: u8) -> CmdResult {
    let template = match shell {
        HookShell::Bash => BASH,
        HookShell::Zsh => ZSH,
        HookShell::Fish => FISH,
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(|s| s.to_string()))
        .map_or_else(
            || "command kz".to_string(),
            |p| match shell {
                HookShell::Fish => format!("command {}", quote::fish(&p)),
                _ => format!("command {}", quote::posix(&p)),
            },
        );
    let flags = if verbose > 0 { " -v" } else { "" };
    print_out(&template.replace("@KZ@", &exe).replace("@FLAGS@", flags))?;
    Ok(exit::OK)
}

/// Variables that select the environment or the config; a change reloads.
const WATCHED_VARS: &[&str] = &[
    "KEYZERO_ENV",
    "NODE_ENV",
    "RAILS_ENV",
    "APP_ENV",
    "RACK_ENV",
    "KEYZERO_CONFIG",
];

/// The per-prompt check.
pub fn env(ctx: &Ctx, args: &HookEnvArgs) -> CmdResult {
    let sh = Emit(args.shell);
    let Some(found) = find_up(&ctx.paths.cwd) else {
        // Outside any project: unload what an earlier project loaded.
        if !args.state.is_empty() {
            print_out(&format!("{}{}", sh.unload(), sh.set_state("")))?;
        }
        return Ok(exit::OK);
    };
    let content = found.content_hash();
    let trusted = crate::trust::is_trusted_hash(&ctx.paths, &found, &content);
    let mut h = Sha256::new();
    h.update(found.dir.as_os_str().as_encoded_bytes());
    h.update([0, u8::from(trusted)]);
    h.update(content.as_bytes());
    for v in WATCHED_VARS {
        h.update([0]);
        h.update(std::env::var_os(v).unwrap_or_default().as_encoded_bytes());
    }
    let state = hex(h.finalize().get(..16).unwrap_or_default());
    if state == args.state {
        return Ok(exit::OK);
    }
    let mut script = sh.unload();
    if !trusted {
        ctx.out.note(&format!(
            "{} is not trusted: review it, then run `kz allow` to load its secrets in this shell",
            found.project_path().display()
        ));
    } else {
        match load_vars(ctx) {
            Ok(vars) => {
                let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
                for (name, value) in &vars {
                    let Some(v) = value.expose_str() else {
                        ctx.out.note(&format!(
                            "{name}: not UTF-8 text, not loaded into the shell"
                        ));
                        continue;
                    };
                    script.push_str(&sh.load(name, v));
                }
                script.push_str(&sh.set_loaded(&names));
                if !names.is_empty() {
                    ctx.out.verbose(&format!("loaded {}", names.join(" ")));
                }
            }
            Err(f) => {
                ctx.out.all(&f.diagnostics);
                ctx.out.note("no secrets loaded; fix the problem, then `unset _kz_state` (or change directory) to retry");
            }
        }
    }
    script.push_str(&sh.set_state(&state));
    print_out(&script)?;
    Ok(exit::OK)
}

fn load_vars(ctx: &Ctx) -> Result<super::Vars, crate::report::Failure> {
    let config = ctx.load()?;
    let all: Vec<_> = config.secrets.iter().collect();
    let outcomes = ctx.resolve(&config, &all)?;
    collect(ctx, &config, outcomes)
}

/// Shell code for one shell.
struct Emit(HookShell);

impl Emit {
    fn unload(&self) -> String {
        match self.0 {
            HookShell::Fish => "_kz_unload;\n".into(),
            _ => "_kz_unload\n".into(),
        }
    }

    fn load(&self, name: &str, value: &str) -> String {
        match self.0 {
            HookShell::Fish => format!(
                "if set -q {name}; set -g _kz_set_{name} 1; set -g _kz_saved_{name} ${name}; end\nset -gx {name} {};\n",
                quote::fish(value)
            ),
            _ => format!(
                "if [ -n \"${{{name}+x}}\" ]; then _kz_set_{name}=1; _kz_saved_{name}=\"${name}\"; fi\nexport {name}={}\n",
                quote::posix(value)
            ),
        }
    }

    fn set_loaded(&self, names: &[&str]) -> String {
        match self.0 {
            HookShell::Fish => format!("set -g _kz_loaded {};\n", names.join(" ")),
            _ => format!("_kz_loaded={}\n", quote::posix(&names.join(" "))),
        }
    }

    fn set_state(&self, state: &str) -> String {
        match self.0 {
            HookShell::Fish => format!("set -g _kz_state {};\n", quote::fish(state)),
            _ => format!("_kz_state={}\n", quote::posix(state)),
        }
    }
}
