Feature: a hive on a machine rbee reaches as root is a system service
  A test host booted with systemd as its PID 1 (sshd one of its units), reached over SSH as root.

  @test001-55
  Scenario: rbee apply installs the hive as an enabled system unit that runs as its own user
    Given a machine that runs systemd, reached over SSH as root
    When rbee apply has installed a hive there with data_dir /srv/rbee
    Then the hive runs as an enabled system unit, its main process the hive daemon
    And the hive and its worker run as the user rbee, who owns /srv/rbee and is not root
    And the fleet answers through the queen
