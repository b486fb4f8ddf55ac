Feature: Nodes over SSH: hives on machines rbee reaches with real sshd and checked host keys

  Background:
    Given two SSH test hosts, node1 and node2

  @test001-3 @test001-57
  Scenario: install on a node
    Given a hive.yaml with node1 serving "smollm2"
    When I run rbee apply with --yes
    Then node1 runs a hive daemon and 1 worker
    And node1 holds rbee's config and its own credential only root can read

  @test001-1
  Scenario: add a node
    Given a hive.yaml with node1 serving "smollm2"
    And rbee apply has run
    When I add node2 serving "smollm2" to hive.yaml and run rbee apply with --yes
    Then node2 runs a hive daemon and 1 worker
    And node1's worker kept its process

  @test001-2
  Scenario: add a node that cannot be reached
    Given a hive.yaml with node1 serving "smollm2"
    And rbee apply has run
    And node2 is cut off from the network
    When I add node2 serving "smollm2" to hive.yaml and run rbee apply, which fails
    Then rbee exits with 1 within 120 seconds, naming node2 and that it could not connect over SSH
    And node1's worker kept its process
    And node2 holds no rbee files

  @test001-4 @test001-59
  Scenario: list nodes
    Given a hive.yaml with node1 and node2 serving "smollm2"
    And rbee apply has run
    When I run rbee status
    Then it lists node1 and node2 as running with an idle worker each

  @test001-5
  Scenario: remove a node
    Given a hive.yaml with node1 and node2 serving "smollm2"
    And rbee apply has run
    When I remove node2 from hive.yaml and run rbee apply with --yes
    Then node2 runs no rbee process and holds no rbee files
    And node1 runs a hive daemon and 1 worker

  @test001-49
  Scenario: destroy cascades
    Given a hive.yaml with node1 and node2 serving "smollm2"
    And rbee apply has run
    When I run rbee destroy with --yes
    Then no rbee process remains on node1 or node2
    And no queen runs
