Feature: with nothing configured, rbee keeps its files in the user's own folders
  The keeper's state in ~/.local/share/rbee (RBEE_HOME unset) and a local hive's in
  ~/.local/share/rbee/hives/NAME (data_dir unset), made private to the user; HOME is a fresh folder here.

  @test001-54
  Scenario: a first apply with no RBEE_HOME and no data_dir puts everything under ~/.local/share/rbee
    Given a fresh HOME and a hive.yaml that names no data_dir
    When I run rbee apply with --yes
    Then rbee exits with 0
    And ~/.local/share/rbee holds the operator credential, the admin key and the queen's state, readable by the user only
    And ~/.local/share/rbee/hives/local holds the hive's catalog, its models and its logs
    And rbee destroy leaves no process behind
