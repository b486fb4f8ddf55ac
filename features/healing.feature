Feature: The queen heals hives on other machines by itself

  Background:
    Given two SSH test hosts running a hive each, with a queen that listens on all addresses, reconciles every 2 seconds and takes heartbeats every second

  Scenario: hives on other machines send heartbeats
    Then the queen hears from both hives within 15 seconds

  Scenario: a killed hive is restarted over SSH with its worker
    When the hive daemon on node1 is killed with SIGKILL
    Then node1's worker exits within 5 seconds
    And the queen restarts node1's hive and worker over SSH without any rbee command

  Scenario: a cut-off machine is routed around and comes back by itself
    When node2's network link is cut
    Then node2 shows Unreachable within 20 seconds while node1 serves every request
    When node2's network link is restored
    Then node2 is Ready and routable within 30 seconds with the worker it had
