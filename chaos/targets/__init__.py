"""Where a topology comes from: the lab, a static inventory file, or OpenStack discovery."""
