# Packer template: a CI runner image (Debian 12) with the appliance baked in.
#
# The appliance is installed into /opt/appliance by provision.sh and started by
# systemd/appliance.service before the runner service, so that the first job of the VM is
# already captured. Secrets (target passwords, the ledger signing key) are not baked into the
# image: they arrive at boot as systemd credentials (see the unit's LoadCredential= lines),
# e.g. from the cloud's instance metadata or a secrets manager.
#
#   packer init packer/ && packer build -var source_image=... packer/runner.pkr.hcl
#
# Not exercised in this repository's CI (no hypervisor or cloud account there); provision.sh
# is the part that matters and is plain shell.

packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
  }
}

variable "source_image" {
  type        = string
  description = "URL or path of a Debian 12 (bookworm) generic cloud qcow2 image"
  default     = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
}

variable "source_checksum" {
  type    = string
  default = "file:https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS"
}

variable "appliance_version" {
  type    = string
  default = "0.1.0"
}

source "qemu" "runner" {
  iso_url          = var.source_image
  iso_checksum     = var.source_checksum
  disk_image       = true
  format           = "qcow2"
  disk_size        = "20G"
  headless         = true
  accelerator      = "kvm"
  ssh_username     = "debian"
  ssh_timeout      = "15m"
  shutdown_command = "sudo shutdown -P now"
  vm_name          = "ci-runner-appliance-${var.appliance_version}.qcow2"
  cd_label         = "cidata"
  cd_files         = ["${path.root}/cloud-init/*"]
}

build {
  sources = ["source.qemu.runner"]

  # The project tree (without .venv) is copied in and installed by provision.sh.
  provisioner "file" {
    source      = "${path.root}/.."
    destination = "/tmp/appliance-src"
  }

  provisioner "shell" {
    execute_command = "sudo -E bash '{{ .Path }}'"
    script          = "${path.root}/provision.sh"
    environment_vars = [
      "APPLIANCE_SRC=/tmp/appliance-src",
    ]
  }
}
