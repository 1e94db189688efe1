//! Set-up of the Vulkan backend's build and tests: Debian packages, and a shaderc archive that
//! vulkano-shaders can link.
//!
//! vulkano-shaders needs shaderc. Debian's `libshaderc_combined.a` lacks glslang and SPIRV-Tools (the
//! link then fails with a misleading "can't find crate for vulkano_shaders"), so we merge it with
//! Debian's static glslang and SPIRV-Tools archives into one `libshaderc_combined.a` under
//! `target/shaderc/` (`ar -M`, under a second) and point `SHADERC_LIB_DIR` there. Building shaderc from
//! source instead costs 6 to 9 minutes per profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Each package with a file that shows it is installed (`{lib}` is the multiarch library folder).
const PACKAGES: [(&str, &str); 6] = [
    ("libvulkan1", "{lib}/libvulkan.so.1"),
    ("mesa-vulkan-drivers", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"),
    ("libshaderc-dev", "{lib}/libshaderc_combined.a"),
    ("glslang-dev", "{lib}/libglslang.a"),
    ("spirv-tools", "/usr/bin/spirv-val"),
    ("glslang-tools", "/usr/bin/glslangValidator"),
];

/// The archives merged into the combined shaderc, in link order.
const ARCHIVES: [&str; 11] = [
    "shaderc_combined",
    "glslang",
    "MachineIndependent",
    "GenericCodeGen",
    "OSDependent",
    "OGLCompiler",
    "SPIRV",
    "glslang-default-resource-limits",
    "HLSL",
    "SPIRV-Tools-opt",
    "SPIRV-Tools",
];

fn lib_dir() -> PathBuf {
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "x86_64-linux-gnu".into());
    Path::new("/usr/lib").join(multiarch)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Installs the Vulkan backend's missing packages (see [`ensure_debian_packages`]).
pub(crate) fn ensure_packages() -> Result<()> {
    ensure_debian_packages(&PACKAGES, "the Vulkan backend")
}

/// Installs the packages whose file (`{lib}` is the multiarch library folder) is missing, with apt when
/// running as root; otherwise fails naming them.
pub(crate) fn ensure_debian_packages(packages: &[(&str, &str)], purpose: &str) -> Result<()> {
    let lib = lib_dir();
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !Path::new(&file.replace("{lib}", &lib.to_string_lossy())).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("{purpose} needs Debian packages; run: sudo apt-get install -y {}", missing.join(" "));
    }
    println!("\n==> apt-get install {}", missing.join(" "));
    // An outdated package list is refreshed first; a failed refresh still lets the install try.
    let _ = Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive").status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot start apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed with {status}", missing.join(" "));
    }
    Ok(())
}

/// Builds (when missing) the merged shaderc archive and returns its folder, for `SHADERC_LIB_DIR`.
pub(crate) fn shaderc_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/shaderc");
    let out = dir.join("libshaderc_combined.a");
    if out.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lib = lib_dir();
    let mut script = String::from("CREATE libshaderc_combined.a.tmp\n");
    for a in ARCHIVES {
        let path = lib.join(format!("lib{a}.a"));
        if !path.exists() {
            bail!("{} is missing (packages libshaderc-dev, glslang-dev, spirv-tools)", path.display());
        }
        script.push_str(&format!("ADDLIB {}\n", path.display()));
    }
    script.push_str("SAVE\nEND\n");
    let mut child = Command::new("ar")
        .arg("-M")
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot start ar")?;
    {
        use std::io::Write;
        child.stdin.take().context("ar's stdin")?.write_all(script.as_bytes()).context("writing the ar script")?;
    }
    if !child.wait().context("waiting for ar")?.success() {
        bail!("ar -M failed to merge the shaderc archives");
    }
    std::fs::rename(dir.join("libshaderc_combined.a.tmp"), &out).context("renaming the merged archive")?;
    Ok(dir)
}

/// Compiles every shader with glslangValidator and validates the SPIR-V with spirv-val.
pub(crate) fn check_shaders(root: &Path) -> Result<()> {
    let out = root.join("target/shaders");
    std::fs::create_dir_all(&out).context("cannot create target/shaders")?;
    let mut shaders: Vec<PathBuf> = std::fs::read_dir(root.join("shaders"))
        .context("cannot read shaders/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "comp"))
        .collect();
    shaders.sort();
    if shaders.is_empty() {
        bail!("no shaders/*.comp");
    }
    for s in &shaders {
        let name = s.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spv = out.join(format!("{name}.spv"));
        let compiled = Command::new("glslangValidator")
            .args(["-V", "--target-env", "vulkan1.1", "-o"])
            .arg(&spv)
            .arg(s)
            .output()
            .context("cannot start glslangValidator")?;
        if !compiled.status.success() {
            bail!("{name}: {}", String::from_utf8_lossy(&compiled.stdout));
        }
        let valid = Command::new("spirv-val")
            .args(["--target-env", "vulkan1.1"])
            .arg(&spv)
            .output()
            .context("cannot start spirv-val")?;
        if !valid.status.success() {
            bail!("{name}: {}", String::from_utf8_lossy(&valid.stderr));
        }
        println!("shader {name}: compiled and valid");
    }
    Ok(())
}
